"""The package's layout holds to its rules: no import cycles, engine functions that take a few objects, a first line
that says what each module holds, and a workflow whose DAG is planned without loading torch."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from code_shape import figures, import_cycles, read_package

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "seqshard"


def test_no_module_imports_another_that_imports_it_back() -> None:
    assert import_cycles(read_package(PACKAGE)) == []


def test_engine_functions_take_at_most_eight_parameters() -> None:
    modules = read_package(PACKAGE)
    wide = [(name, count) for module in modules.values() if module.name.startswith("seqshard.engine")
            for name, _, count in module.functions if count > 8]  # fmt: skip
    assert wide == []


def test_every_module_says_what_it_holds() -> None:
    silent = [module.name for module in read_package(PACKAGE).values() if not (module.docstring or "").strip()]
    assert silent == []


def test_the_package_is_grouped_by_stage() -> None:
    shape = figures(PACKAGE)
    assert shape["import cycles"] == 0 and shape["modules at top level"] <= 6
    packages = {path.name for path in PACKAGE.iterdir() if (path / "__init__.py").is_file()}
    assert {"io", "plan", "engine", "models", "runtime", "serve", "reports"} <= packages


def test_what_the_workflow_imports_loads_no_torch() -> None:
    """Every `seqshard` import of workflow/rules/*.smk, in a fresh interpreter: planning the DAG (dry runs, login
    nodes) must not pay for torch (about 3 s and 300 MB)."""
    imports = [
        line
        for rules in sorted((REPO / "workflow" / "rules").glob("*.smk"))
        for line in rules.read_text().splitlines()
        if re.match(r"\s*(from seqshard[.\w]* import|import seqshard)", line)
    ]
    assert len(imports) >= 5
    code = "\n".join([*(line.strip() for line in imports), "import sys", "print(sorted(m for m in sys.modules "
                      "if m.split('.')[0] in ('torch', 'transformers', 'tokenizers')))"])  # fmt: skip
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_every_registered_architecture_is_in_the_schema_an_image_and_a_demo() -> None:
    """A model file and its registration are enough to run it; these lists name the architectures again and must
    not fall behind: the config schema's enum and `containers:` keys, an image that carries it, a demo checkpoint."""
    import yaml

    from seqshard.demo import DEMOS
    from seqshard.images import IMAGES
    from seqshard.models import ARCHITECTURES

    schema = yaml.safe_load((REPO / "workflow" / "schemas" / "config.schema.yaml").read_text())
    model = schema["properties"]["models"]["additionalProperties"]["properties"]
    assert model["architecture"]["enum"] == list(ARCHITECTURES)
    assert set(schema["properties"]["containers"]["properties"]) == set(ARCHITECTURES)
    carried = [architecture for architectures in IMAGES.values() for architecture in architectures]
    assert sorted(carried) == sorted(ARCHITECTURES)
    assert all(any(name.startswith(prefix) for name in DEMOS) for prefix in ("dnabert2", "lucaone", "esm2", "nt"))
