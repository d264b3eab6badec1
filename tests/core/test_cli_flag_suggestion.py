"""A misspelt flag is a usage error (status 2) that names the flag meant, not only the one refused."""

from __future__ import annotations

import pytest

from modelport.cli import main


@pytest.mark.parametrize(
    ("argv", "said"),
    [
        (
            ["inspect", "default", "--dtpye", "bfloat16"],
            "unrecognized arguments: --dtpye bfloat16 (did you mean --dtype?)",
        ),
        (
            ["generate", "default", "hi", "--max-tokns", "3", "--tempreature=0"],
            "unrecognized arguments: --max-tokns 3 --tempreature=0 (did you mean --max-tokens, --temperature?)",
        ),
        (["plugins", "--jsn"], "unrecognized arguments: --jsn (did you mean --json?)"),
        (["inspect", "default", "--zzz"], "unrecognized arguments: --zzz"),
    ],
)
def test_a_misspelt_flag_names_the_flag_meant(argv, said, capsys):
    with pytest.raises(SystemExit) as caught:
        main(argv)
    assert caught.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"modelport: error: {said}"
