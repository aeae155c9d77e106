"""benchmarks/report.py: the documents show what the results JSON holds.

The committed benchmarks/README.md and docs/results.md must be what the report
regenerates from the committed benchmarks/results/*.json (in-process, as
``report.py --check``); a block is replaced with the prose around it kept.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def report():
    spec = importlib.util.spec_from_file_location(
        "report", ROOT / "benchmarks" / "report.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_documents_match_the_results_json(report):
    stale = report.check()
    assert stale == [], "run: python benchmarks/report.py\n" + "\n".join(stale)
    assert report.main(["--check"]) == 0


def test_a_block_is_replaced_and_the_prose_around_it_kept(report):
    text = (
        "# Title\n\nProse before, 1.5x.\n\n"
        "<!-- BEGIN report:a -->\nold table\n<!-- END report:a -->\n\n"
        "Prose between.\n\n"
        "<!-- BEGIN report:b -->\nkept\n<!-- END report:b -->\n\nProse after.\n"
    )
    new = report.replace_block(text, "a", "| new | table |")
    assert new == text.replace("old table", "| new | table |")
    assert report.block_text(new, "a") == "| new | table |"
    assert report.block_text(new, "b") == "kept"
    # A block the document lacks is appended, the rest left as it was.
    added = report.replace_block(text, "c", "fresh")
    assert added.startswith(text.rstrip("\n"))
    assert report.block_text(added, "c") == "fresh"


def test_check_names_the_stale_block(report, tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    doc = tmp_path / "doc.md"
    doc.write_text(
        "Intro.\n\n<!-- BEGIN report:sweep_cnn -->\nan old number: 0.92x\n"
        "<!-- END report:sweep_cnn -->\n\nOutro.\n"
    )
    documents = {doc: ("sweep_cnn",)}
    assert report.check(results, documents) == [f"{doc}: block sweep_cnn differs"]
    doc.write_text(report.render(doc, ("sweep_cnn",), results))
    assert report.block_text(doc.read_text(), "sweep_cnn") == report.NOT_MEASURED
    assert report.check(results, documents) == []
    assert doc.read_text().startswith("Intro.\n") and "Outro." in doc.read_text()


def test_sections_not_measured_yet_and_then_measured(report, tmp_path):
    src, results = ROOT / "benchmarks" / "results", tmp_path / "results"
    results.mkdir()
    names = ("cnn_results", "finder_quality_cnn", "sweep_cnn")
    for name in names:
        assert report.BLOCKS[name](results) == report.NOT_MEASURED
    rows = report.BLOCKS["targets"](results).splitlines()[2:]
    assert rows and all(f"| {report.NOT_MEASURED} | - |" in r for r in rows)

    shutil.copy(src / "sweep_mlp_adamw.json", results / "sweep_cnn.json")
    fq = json.loads((src / "finder_quality.json").read_text())
    (results / "finder_quality_cnn.json").write_text(json.dumps({**fq, "model": "cnn"}))
    cnn = json.loads((src / "cnn_results.json").read_text())
    (results / "cnn_results.json").write_text(json.dumps(cnn))
    for seed in cnn["per_seed"].values():
        seed["lr_method"] = "divergence"
    (results / "cnn_results_knee.json").write_text(json.dumps(cnn))

    table = report.BLOCKS["cnn_results"](results)
    rows = [line for line in table.splitlines() if line.startswith("| `cnn_results")]
    assert [r.split(" | ")[1] for r in rows] == ["knee", "divergence"]
    assert report.NOT_MEASURED not in table
    finder = report.BLOCKS["finder_quality_cnn"](results)
    assert "model `cnn`" in finder and "| knee | **" in finder
    assert "**(recommended)**" in report.BLOCKS["sweep_cnn"](results)
