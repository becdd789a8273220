"""Guards on the repository layout."""

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE_ROOTS = [
    ROOT / "platform",
    ROOT / "workers",
    ROOT / "client",
    ROOT / "contract" / "src",
    *sorted((ROOT / "verticals").glob("*/src")),
]


def top_level_names() -> set[str]:
    names = set()
    for root in SOURCE_ROOTS:
        for child in root.iterdir():
            if child.is_dir() and (child / "__init__.py").exists():
                names.add(child.name)
            elif child.suffix == ".py":
                names.add(child.stem)
    return names


def test_no_importable_name_shadows_the_standard_library():
    shadowing = top_level_names() & set(sys.stdlib_module_names)
    assert not shadowing, f"these importable names shadow the standard library: {sorted(shadowing)}"


def test_platform_folder_is_not_a_package():
    assert not (ROOT / "platform" / "__init__.py").exists()


def test_import_roots_are_the_expected_unique_names():
    names = top_level_names()
    assert {"tunery", "tunery_engine", "tunery_serving", "tunery_client", "tunery_contract"} <= names
    assert all(name.startswith("tunery") for name in names), sorted(names)
