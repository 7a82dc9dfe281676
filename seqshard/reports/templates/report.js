// Sortable tables (click a header; numbers sort by their raw value, missing ones last) and the job filter.
// Plain script, no library: the page must open offline.
(function () {
  "use strict";

  function sortKey(cell, numeric) {
    if (!numeric) {
      return cell.textContent.toLowerCase();
    }
    var raw = cell.getAttribute("data-v");
    return raw === null || raw === "" ? NaN : parseFloat(raw);
  }

  function compare(a, b, numeric, direction) {
    if (numeric) {
      var aMissing = isNaN(a[0]), bMissing = isNaN(b[0]);
      if (aMissing || bMissing) {
        return aMissing === bMissing ? a[1] - b[1] : (aMissing ? 1 : -1);
      }
    }
    if (a[0] < b[0]) { return -direction; }
    if (a[0] > b[0]) { return direction; }
    return a[1] - b[1];
  }

  function sortTable(table, column, header) {
    var numeric = header.classList.contains("num");
    var ascending = header.getAttribute("aria-sort") !== "ascending";
    var body = table.tBodies[0];
    var keyed = Array.prototype.map.call(body.rows, function (row, index) {
      return [sortKey(row.cells[column], numeric), index, row];
    });
    keyed.sort(function (a, b) { return compare(a, b, numeric, ascending ? 1 : -1); });
    var fragment = document.createDocumentFragment();
    keyed.forEach(function (item) { fragment.appendChild(item[2]); });
    body.appendChild(fragment);
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (cell) { cell.removeAttribute("aria-sort"); });
    header.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  }

  document.querySelectorAll("table.sortable").forEach(function (table) {
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (header, column) {
      header.tabIndex = 0;
      header.title = "Sort by " + header.textContent;
      header.addEventListener("click", function () { sortTable(table, column, header); });
      header.addEventListener("keydown", function (event) {
        if (event.key === "Enter") { sortTable(table, column, header); }
      });
    });
  });

  var filter = document.getElementById("job-filter");
  var jobs = document.getElementById("job-table");
  var count = document.getElementById("job-count");
  if (filter && jobs && count) {
    filter.addEventListener("input", function () {
      var needle = filter.value.trim().toLowerCase();
      var shown = 0;
      Array.prototype.forEach.call(jobs.tBodies[0].rows, function (row) {
        var match = needle === "" || row.textContent.toLowerCase().indexOf(needle) !== -1;
        row.hidden = !match;
        shown += match ? 1 : 0;
      });
      count.textContent = shown.toLocaleString("en") + " of " + jobs.tBodies[0].rows.length.toLocaleString("en") + " jobs";
    });
  }
  document.documentElement.setAttribute("data-report-ready", "true");
}());
