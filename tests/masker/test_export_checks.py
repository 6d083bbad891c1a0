"""`fmix export` refuses an opset it cannot write and a cap no mix can meet, before writing anything (issue 9 item 3)."""

import pytest
from typer.testing import CliRunner

from fmix.cli import app
from fmix.masker.export import check_cap, check_opset

runner = CliRunner()


def test_check_opset_range():
    import onnx

    newest = onnx.defs.onnx_opset_version()
    check_opset(17)
    check_opset(newest)
    for opset in (16, newest + 1, 99):
        with pytest.raises(
            ValueError, match=rf"export.opset must be in \[17, {newest}\] \(the installed onnx's range\), got {opset}"
        ):
            check_opset(opset)


def test_check_cap_against_the_smallest_mixing_k():
    check_cap(0.5, (2, 3))
    check_cap(None, (2,))
    check_cap(0.2, (1,))  # k = 1 does not mix
    with pytest.raises(
        ValueError,
        match=r"mixing.cap=0.3 is infeasible for the smallest k=3: 3 weights summing to 1 cannot all be <= 0.3 \(need mixing.cap >= 0.3333\)",
    ):
        check_cap(0.3, (1, 3, 4))


@pytest.mark.parametrize(
    "section, message",
    [
        ("export: {opset: 99}\n", "export.opset must be in [17, {newest}] (the installed onnx's range), got 99"),
        (
            "mixing: {cap: 0.4}\n",
            "mixing.cap=0.4 is infeasible for the smallest k=2: 2 weights summing to 1 cannot all be <= 0.4 (need mixing.cap >= 0.5)",
        ),
        ("export: {k: 7}\n", "export.k=7 must be one of mixing.k_values=[2, 3, 4, 5, 6]"),
    ],
)
def test_export_command_refuses_before_writing(pipeline_sample, tmp_path, section, message):
    import onnx

    params = tmp_path / "p.yaml"
    params.write_text(section)
    out = tmp_path / "models" / "masker.onnx"
    args = [
        "export",
        str(pipeline_sample["aligned"]),
        str(pipeline_sample["splits"] / "public.csv"),
        str(out),
        "--params",
        str(params),
    ]
    result = runner.invoke(app, args)
    assert (result.exit_code, result.output) == (1, f"error: {message.format(newest=onnx.defs.onnx_opset_version())}\n")
    assert not out.parent.exists()
