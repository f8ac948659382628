"""AMX and VNNI are detected from the kernel's CPU flags, never assumed: some machines that
run semsearch are Intel with AMX, others AMD with AVX512-VNNI only."""

from __future__ import annotations

from pathlib import Path

from semsearch.adapters.embedders.onnx_local import cpu_features

AMD = ("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
       "flags\t\t: fpu avx2 avx512f avx512_vnni avx_vnni\n")
INTEL = "flags\t\t: fpu avx512f avx512_vnni amx_bf16 amx_tile amx_int8 avx512_bf16\n"


def test_amd_with_vnni_has_no_amx(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(AMD)
    assert cpu_features(tmp_path / "cpuinfo") == {"avx512_vnni", "avx_vnni"}


def test_intel_with_amx(tmp_path: Path) -> None:
    (tmp_path / "cpuinfo").write_text(INTEL)
    assert {"amx_tile", "amx_int8", "amx_bf16"} <= cpu_features(tmp_path / "cpuinfo")


def test_no_cpuinfo_is_no_features(tmp_path: Path) -> None:
    assert cpu_features(tmp_path / "missing") == frozenset()


def test_this_machine_reads_without_error() -> None:
    assert cpu_features() <= {"amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni",
                              "avx512_bf16"}
