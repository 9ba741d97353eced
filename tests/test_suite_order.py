"""The order in which scripts/test.sh hands modules to its workers (tests/conftest.py, LONGEST_MODULES_FIRST)."""

from pathlib import Path

from conftest import LONGEST_MODULES_FIRST

TESTS = Path(__file__).resolve().parent


def test_the_longest_modules_named_for_the_workers_exist_once_each():
    # A renamed module would silently fall back to the end of the order, where a long module makes one worker run on
    # alone.
    assert len(set(LONGEST_MODULES_FIRST)) == len(LONGEST_MODULES_FIRST)
    assert [name for name in LONGEST_MODULES_FIRST if not (TESTS / name).is_file()] == []


def test_the_suite_is_collected_longest_modules_first(request):
    # Of the modules this session collected (the whole suite under scripts/test.sh), the listed ones come first, in
    # the list's order.
    names = list(dict.fromkeys(item.path.name for item in request.session.items))
    listed = [name for name in LONGEST_MODULES_FIRST if name in names]
    assert names[: len(listed)] == listed
