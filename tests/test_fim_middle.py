"""What a fill-in-the-middle reply is cut to (engines/llm/prompts.py), for models with FIM
tokens and without: the middles below are what Qwen2.5-Coder-0.5B-Instruct wrote on HumanEval
infilling cases (benchmarks/fim.py) before the cut."""
from __future__ import annotations

from engines.llm.prompts import clean_middle, middle_stops

PREFIX = 'def modp(n: int, p: int):\n    """2^n modulo p."""\n    ret = 1\n    for i in range(n):\n        ret = (2 * ret) % p\n'


def test_a_middle_inside_a_function_ends_before_new_top_level_code():
    written = "    return ret\n\n\ndef test_modp():\n    assert modp(3, 5) == 3\n"
    assert clean_middle(written, PREFIX, "\n") == "    return ret"
    examples = "    return lst2\n\n# Test cases\nprint(total_match([], []))"
    assert clean_middle(examples, "def f(lst1, lst2):\n    l1 = 0\n", "\n    return l1\n") == "    return lst2"
    # the example: no fence, no repeated prefix, no call after the function
    assert clean_middle("return a + b\nprint(add(2, 3))", "def add(a, b):\n    ", "\n") == "return a + b"


def test_closing_brackets_and_top_level_middles_stay_whole():
    c_code = "  x++;\n  return x;\n}"
    assert clean_middle(c_code, "int f(int x) {\n", "\n\nint g(void) { return 0; }\n") == c_code
    top = "import sys\nprint(sys.argv)"
    assert clean_middle(top, "import os\n", "\n") == top


def test_middle_stops():
    assert middle_stops("(a, b)\nnext()") == ("\n", "(a, b)")  # cursor inside a line
    assert middle_stops("\n\n    return total\n") == ("\n    return total",)  # the next line again
    assert middle_stops("\n") == ()
