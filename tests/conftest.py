"""Two tiers. `pytest` runs every test except those marked `slow`: every rung, kind and path, the
notebooks, the grader's attacks and the compile checks — what a change most likely breaks, in
under ten minutes on two cores (the CI job). `pytest -m slow` runs the rest: more shapes of the same
paths in the simulator, which is CPU-bound. `pytest -m "slow or not slow"` runs everything.

SLOW lists them by test id, here in one place, so that what the fast tier leaves out is visible."""

import pytest

SLOW = (
    # the ladder in the simulator: the longest problems (N = 67 and 33); the small odd ones
    # (N = 1, 7, 13×29, 29×13) keep every rung on masks, GQA, both head dims and dtypes
    "test_rung_matches_float64[*-B=1_H=1_N=67",
    "test_rung_matches_float64[*-B=1_H=2/1_N=33",
    "test_rung_matches_float64[*-B=1_H=1_N=33",
    # the two three-kernel rungs (they keep the N² scores) at 8 heads: the 4-head cases cover them
    "test_rung_matches_float64[tiled-B=1_H=8/2",
    "test_rung_matches_float64[naive-B=1_H=8/2",
    "test_rung_matches_float64[flash1-B=1_H=8/2",  # (flash1's own cases: test_kernel_parts)
    # paged decode: the cases beyond the four that cover GQA/MQA, causal Nq > 1, windows, bf16
    "test_paged_decode_matches_float64[B=1_H=4/2_Nq=1_ctx=61",
    "test_paged_decode_matches_float64[B=1_H=3/1_Nq=2_ctx=29",
    "test_paged_decode_matches_float64[B=3_H=2/1_Nq=1_ctx=1..45",
    "test_paged_decode_matches_float64[B=2_H=2/2_Nq=3",
    "test_paged_decode_matches_float64[B=1_H=2/1_Nq=1_ctx=9",
    "test_paged_decode_matches_float64[B=2_H=4/2_Nq=1_ctx=20..37",  # (GQA: test_decode's first case)
    "test_paged_decode_matches_float64[B=1_H=2/1_Nq=3_ctx=17_D=24",
    # the FP8 cache's float64 case (its combine's 128 threads are slow in the simulator; the
    # bfloat16/window FP8 case stays)
    "test_fp8_cache_matches_float64_on_the_dequantised_cache",
    # every head dim (multiples of 8 to 256) beyond the default tier's three simulator cases and its
    # tile-rule tests: more D in the simulator, the GPU's default tiles, the sm_90 compile sweep
    "test_more_head_dims_match_float64",
    "test_head_dims_at_default_tiles_match_float64",
    "test_head_dims_compile_for_sm90",
    # D = 64/128/256 and bfloat16 at sm_90 (test_training_compile compiles it at two configs)
    "test_compiles_for_sm90_without_spills",
    # the decode API's older cases (the same rung as test_paged_decode's)
    "test_decode_matches_float64_on_gathered_cache[B=2_H=4/1_Nq=3",
    "test_decode_matches_float64_on_gathered_cache[B=3_H=2/1",
    # flash1 beyond the ladder's cases
    "test_flash1_matches_float64[B=2_H=3/1",
    "test_flash1_matches_float64[B=1_H=2_N=41x19",
    # the instructor's validation of three of the five assignments (online-softmax is graded in the
    # default tier by the round trip and the attacks; flash2 and causal-skip are validated there)
    "test_validate_every_assignment[naive-softmax]",
    "test_validate_every_assignment[tiled-qk]",
    "test_validate_every_assignment[online-softmax]",
    # grading every second solution into a CSV (the round trip itself stays: test_grading_exports)
    "test_grade_all_writes_a_csv_and_every_second_solution_gets_every_point",
)


def _matches(nodeid: str, pattern: str) -> bool:
    name = nodeid.split("::")[-1]
    if "[*" in pattern:  # any rung
        head, tail = pattern.split("[*", 1)
        return name.startswith(head + "[") and tail in name
    return name.startswith(pattern)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if any(_matches(item.nodeid, p) for p in SLOW):
            item.add_marker(pytest.mark.slow)
