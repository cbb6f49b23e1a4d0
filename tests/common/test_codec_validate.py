"""validate_prompt_embeds_tensor: the decoder's checks for tensors already in memory."""

from __future__ import annotations

import warnings

import pytest

torch = pytest.importorskip("torch")

from pe_common.codec import (  # noqa: E402
    EmbedsLimits,
    PromptEmbedsError,
    validate_prompt_embeds_tensor,
)

H = 8


def expect_code(t: object, code: str, **kwargs: object) -> PromptEmbedsError:
    options = {"hidden_size": H, "dtype": torch.float32, **kwargs}
    with pytest.raises(PromptEmbedsError) as info:
        validate_prompt_embeds_tensor(t, **options)  # type: ignore[arg-type]
    assert info.value.code == code
    return info.value


@pytest.mark.parametrize(
    "source", [torch.float32, torch.float16, torch.bfloat16, torch.float64, torch.float8_e4m3fn]
)
@pytest.mark.parametrize("target", [torch.float32, torch.float16, torch.bfloat16])
def test_any_float_source_is_cast(source: torch.dtype, target: torch.dtype) -> None:
    x = torch.linspace(-2, 2, 3 * H).reshape(3, H).to(source)
    out = validate_prompt_embeds_tensor(x, hidden_size=H, dtype=target)
    assert out.dtype == target and out.shape == (3, H) and out.is_contiguous()
    assert torch.equal(out, x.to(target))


def test_result_is_an_owned_detached_copy() -> None:
    x = torch.randn(3, H, requires_grad=True)
    out = validate_prompt_embeds_tensor(x, hidden_size=H, dtype=torch.float32)
    assert not out.requires_grad and out.data_ptr() != x.data_ptr()
    with torch.no_grad():
        x.zero_()
    assert out.abs().sum() > 0


def test_views_batch_dim_and_parameters() -> None:
    base = torch.randn(10, H)
    for x in (base[2:5], base.t().contiguous().t(), base[None, :4], torch.nn.Parameter(base)):
        expected = x.detach()[0] if x.dim() == 3 else x.detach()
        out = validate_prompt_embeds_tensor(x, hidden_size=H, dtype=torch.bfloat16)
        assert torch.equal(out, expected.to(torch.bfloat16)) and out.is_contiguous()


@pytest.mark.parametrize("shape", [(), (H,), (2, 3, H), (1, 1, 2, H)], ids=str)
def test_bad_rank(shape: tuple[int, ...]) -> None:
    expect_code(torch.ones(shape), "invalid_shape")


def test_shape_width_rows_and_size() -> None:
    expect_code(torch.ones(0, H), "empty_prompt")
    message = expect_code(torch.ones(2, H + 1), "hidden_size_mismatch").message
    assert message == "`prompt_embeds` hidden_size 9 does not match the model's hidden_size 8."
    expect_code(torch.ones(65, H), "too_large", limits=EmbedsLimits(max_rows=64))
    expect_code(torch.ones(32, H), "too_large", limits=EmbedsLimits(max_bytes=1000))
    huge = torch.ones(1, H).expand(10**6, H)  # stride 0: checked by size before any copy
    expect_code(huge, "too_large", limits=EmbedsLimits(max_bytes=2**20))


def test_non_float_and_non_finite() -> None:
    error = expect_code(torch.ones(2, H, dtype=torch.int64), "unsupported_dtype")
    assert error.message == (
        "`prompt_embeds` dtype torch.int64 is not a floating-point type, cannot safely cast "
        "to the model's dtype torch.float32."
    )
    expect_code(torch.ones(2, H, dtype=torch.bool), "unsupported_dtype")
    expect_code(torch.ones(2, H, dtype=torch.complex64), "unsupported_dtype")
    x = torch.ones(2, H)
    x[1, 1] = float("nan")
    expect_code(x, "non_finite_values")
    expect_code(torch.full((2, H), 1e5), "non_finite_values", dtype=torch.float16)


def test_tensor_kinds() -> None:
    expect_code([[1.0] * H], "unsupported_tensor_kind")
    expect_code(torch.ones(2, H).to_sparse_bsr((1, 2)), "unsupported_layout")
    expect_code(torch.empty(2, H, device="meta"), "unsupported_tensor_kind")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantized = torch.quantize_per_tensor(torch.ones(2, H), 0.1, 0, torch.qint8)
        nested = torch.nested.nested_tensor([torch.ones(2, H), torch.ones(1, H)])
    expect_code(quantized, "unsupported_tensor_kind")
    expect_code(nested, "unsupported_tensor_kind")


def test_param_is_reported() -> None:
    with pytest.raises(PromptEmbedsError) as info:
        validate_prompt_embeds_tensor(
            torch.ones(2, 3), hidden_size=H, dtype=torch.float32, param="prompts[2]"
        )
    assert info.value.param == "prompts[2]"
