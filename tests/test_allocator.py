"""glibc told to keep freed memory during a run: the limits set and undone, where they apply, no result changed."""

import ctypes
import json
from pathlib import Path

import pytest
import torch

from cifarctl import allocator
from cifarctl.allocator import keeps_memory, kept_memory
from cifarctl.engine import TrainConfig, load_checkpoint, resume, train

from conftest import FAST, tiny_dataset

GLIBC = pytest.mark.skipif(allocator.glibc() is None, reason="the setting is glibc's (Linux)")


@pytest.fixture(autouse=True)
def no_malloc_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in (*allocator.ENVIRONMENT, "GLIBC_TUNABLES"):
        monkeypatch.delenv(name, raising=False)


class FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("malloc_trim", pad))
        return 1


@pytest.fixture()
def libc(monkeypatch: pytest.MonkeyPatch) -> FakeLibc:
    fake = FakeLibc()
    monkeypatch.setattr(allocator, "glibc", lambda: fake)
    return fake


KEEP = [("mallopt", allocator.M_MMAP_MAX, 0), ("mallopt", allocator.M_TRIM_THRESHOLD, -1)]
UNDO = [("mallopt", allocator.M_MMAP_MAX, 65536), ("mallopt", allocator.M_TRIM_THRESHOLD, 128 * 1024),
        ("malloc_trim", 0)]


def test_the_limits_are_set_for_the_block_and_undone_by_the_outermost(libc: FakeLibc) -> None:
    with kept_memory() as outer:
        assert outer and libc.calls == KEEP
        with kept_memory() as inner:  # a run inside a run (a notebook's loop): set once
            assert inner and libc.calls == KEEP
        assert libc.calls == KEEP  # still kept: the outer block goes on
    assert libc.calls == KEEP + UNDO


def test_the_limits_are_undone_when_the_run_fails(libc: FakeLibc) -> None:
    with pytest.raises(RuntimeError), kept_memory():
        raise RuntimeError("the run failed")
    assert libc.calls == KEEP + UNDO


def test_nothing_is_touched_when_off_or_set_by_the_user(libc: FakeLibc, monkeypatch: pytest.MonkeyPatch) -> None:
    with kept_memory(False) as kept:
        assert not kept
    assert libc.calls == []  # off: not a single call
    for name, value in (("MALLOC_TRIM_THRESHOLD_", "68719476736"),
                        ("GLIBC_TUNABLES", "glibc.malloc.mmap_max=0")):
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with kept_memory() as kept:
                assert not kept
    assert libc.calls == []  # the user's own setting: left as it is
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.cpu.hwcaps=-AVX512F")  # another tunable: not malloc's
    with kept_memory() as kept:
        assert kept
    assert libc.calls == KEEP + UNDO


def test_elsewhere_than_glibc_it_is_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "glibc", lambda: None)
    with kept_memory() as kept:
        assert not kept


def test_on_by_default_where_it_measured_faster_and_as_asked_otherwise() -> None:
    cpu = torch.device("cpu")
    assert keeps_memory(cpu, None)                    # CPU fp32: 1.41x faster
    assert not keeps_memory(cpu, torch.bfloat16)      # CPU bf16: faster one day, slower another
    assert not keeps_memory(torch.device("cuda"), torch.bfloat16)
    assert not keeps_memory(torch.device("cuda"), None)
    assert not keeps_memory(cpu, None, asked=False) and keeps_memory(cpu, torch.bfloat16, asked=True)


def record_uses(monkeypatch: pytest.MonkeyPatch, where: str) -> list[bool]:
    """``kept_memory`` as ``where`` calls it, each call's ``enabled`` recorded."""
    used: list[bool] = []
    real = allocator.kept_memory

    def spy(enabled: bool = True):
        used.append(enabled)
        return real(enabled)

    monkeypatch.setattr(f"{where}.kept_memory", spy)
    return used


class MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks",
                 "keepcost")]


def mmapped_bytes() -> int:
    """Bytes glibc's malloc holds in separate mmap()s now (blocks above its mmap threshold)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = MallInfo2
    return libc.mallinfo2().hblkhd


@GLIBC
def test_inside_the_block_a_large_tensor_comes_from_the_heap_and_stays() -> None:
    if not hasattr(ctypes.CDLL(None), "mallinfo2"):
        pytest.skip("glibc before 2.33 has no mallinfo2")
    size = 64 << 20  # above glibc's largest mmap threshold (32 MiB): mmap()ed by default
    before = mmapped_bytes()
    t = torch.empty(size, dtype=torch.uint8)
    assert mmapped_bytes() - before >= size  # glibc's defaults: its own mapping, unmapped when freed
    del t
    with kept_memory() as kept:
        assert kept
        t = torch.empty(size, dtype=torch.uint8)
        assert mmapped_bytes() - before < size  # from the heap, which keeps it when it is freed
        del t
    t = torch.empty(size, dtype=torch.uint8)
    assert mmapped_bytes() - before >= size  # the limits undone after the block
    del t


def test_a_run_keeps_memory_by_default_in_fp32_and_its_weights_are_the_same_without(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    used = record_uses(monkeypatch, "cifarctl.training.trainer")
    data = tiny_dataset()
    train(TrainConfig(epochs=1, max_steps=3, **FAST), data, tmp_path / "kept")
    train(TrainConfig(epochs=1, max_steps=3, keep_memory=False, **FAST), data, tmp_path / "defaults")
    assert used == [True, False]
    a = load_checkpoint(tmp_path / "kept" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "defaults" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "defaults" / "config.json").read_text())
    assert config["keep_memory"] is False
    resume(tmp_path / "defaults", data, overrides={"max_steps": 4, "keep_memory": True})  # no result depends on it
    assert used == [True, False, True]


def test_the_budget_times_each_member_with_the_setting_its_run_will_use(monkeypatch: pytest.MonkeyPatch) -> None:
    from cifarctl.training import choice

    used = record_uses(monkeypatch, "cifarctl.training.choice")
    cpu = torch.device("cpu")
    small = dict(device="cpu", batch_size=8, eval_batch_size=8, amp=False)
    for keep in (None, False):
        choice.probe_candidate(TrainConfig.for_model("airbench94_quarter", "muon", keep_memory=keep, **small), cpu,
                               test_images=8)
    record = TrainConfig.for_model("airbench94_quarter", "record", **small)
    choice.probe_candidate(record, cpu, test_images=8)
    assert used == [True, False, True]  # fp32's default; asked off; the record's own
    # The record's whole batches keep their memory in bf16 too, where the device's default does not.
    assert record.keep_memory is True and allocator.keeps_memory(cpu, torch.bfloat16, record.keep_memory)
    assert not allocator.keeps_memory(cpu, torch.bfloat16, TrainConfig.for_model("airbench94", "muon").keep_memory)