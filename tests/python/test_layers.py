"""The layering check (tests/layers.py) passes on the tree and catches what it is for."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CHECK = ROOT / "tests" / "layers.py"


def run(root):
    return subprocess.run(
        [sys.executable, str(CHECK), str(root)], capture_output=True, text=True, timeout=60
    )


def copy_tree(tmp_path):
    (tmp_path / "node").mkdir()
    (tmp_path / "docs").mkdir()
    shutil.copytree(ROOT / "node" / "src", tmp_path / "node" / "src")
    shutil.copy(ROOT / "docs" / "architecture.md", tmp_path / "docs" / "architecture.md")
    return tmp_path


def test_the_tree_imports_one_way_only():
    result = run(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_an_import_up_a_layer_fails(tmp_path):
    root = copy_tree(tmp_path)
    hub = root / "node" / "src" / "hub" / "mod.rs"
    hub.write_text(hub.read_text() + "\nfn upward() { let _ = crate::router::Router::new; }\n")
    result = run(root)
    assert result.returncode == 1
    assert "hub (layer 2) imports router (layer 7)" in result.stdout


def test_a_grouped_import_within_a_layer_from_below_fails(tmp_path):
    root = copy_tree(tmp_path)
    broker = root / "node" / "src" / "broker" / "mod.rs"
    broker.write_text(broker.read_text() + "\nuse crate::{sync::lock, hub::Hub};\n")
    result = run(root)
    assert result.returncode == 1
    assert "broker (layer 2) imports hub (layer 2)" in result.stdout


def test_comments_are_not_imports(tmp_path):
    root = copy_tree(tmp_path)
    hub = root / "node" / "src" / "hub" / "mod.rs"
    hub.write_text(hub.read_text() + "\n// see crate::admin for who reads this\n")
    assert run(root).returncode == 0


def test_a_module_missing_from_the_table_fails(tmp_path):
    root = copy_tree(tmp_path)
    (root / "node" / "src" / "newpart.rs").write_text("pub fn f() {}\n")
    result = run(root)
    assert result.returncode == 1
    assert "newpart: not in the Layers table" in result.stdout
