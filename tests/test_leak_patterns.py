"""The leak patterns (course_tools.leaks) leave out lines that reveal nothing and keep the ones that do."""

from course_tools.leaks import _LOOP, find_leaks, hidden_check_patterns, leak_patterns


def test_generic_lines_are_not_patterns_but_literal_seeds_are():
    generic = ["for k in range(1, n + 1):", "with torch.no_grad():", "g = torch.Generator().manual_seed(seed)"]
    revealing = ["g = torch.Generator().manual_seed(1234)", "g = torch.Generator().manual_seed(seed + 7)"]
    assert all(_LOOP.match(line) for line in generic)
    assert not any(_LOOP.match(line) for line in revealing)
    patterns = set(leak_patterns()) | set(hidden_check_patterns())
    assert not patterns & set(generic)
    assert len(patterns) > 100  # the hidden checks' own lines are still there


def test_a_lecture_that_seeds_a_generator_from_a_variable_is_not_a_leak(tmp_path):
    page = tmp_path / "lecture.html"
    page.write_text("<pre>def draw(seed):\n    g = torch.Generator().manual_seed(seed)\n</pre>", encoding="utf-8")
    assert find_leaks([page], leak_patterns()) == []
