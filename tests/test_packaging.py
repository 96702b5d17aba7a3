"""The installed package must contain every module of the source tree."""

from pathlib import Path

from setuptools import find_packages

ROOT = Path(__file__).resolve().parents[1]


def test_every_module_folder_is_a_package():
    packages = set(find_packages(str(ROOT), include=["fuseline_broker*"]))
    folders = {
        ".".join(path.parent.relative_to(ROOT).parts)
        for path in (ROOT / "fuseline_broker").rglob("*.py")
    }
    # A folder of modules without __init__.py is left out of a normal install.
    assert folders - packages == set()


def test_schema_file_is_package_data():
    config = (ROOT / "setup.cfg").read_text()
    assert "storage/*.sql" in config
    assert (ROOT / "fuseline_broker" / "storage" / "schema.sql").exists()
