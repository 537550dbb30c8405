"""Two processes under torchrun (gloo, CPU) train exactly like one process with twice the accumulation,
also across a stop and a resume."""

import subprocess
import sys

import numpy as np
import pytest
from _train_helpers import byte_token_dir, losses, sets, shakespeare_bytes

ARGS = sets(train__max_steps=10, train__eval_every=5, train__ckpt_every=5, train__eval_batches=4)


@pytest.mark.slow
@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_torchrun_two_ranks_equal_one_process_with_grad_accum_2(tmp_path, cli_env, optimizer):
    data = byte_token_dir(tmp_path / "data", shakespeare_bytes(200_000))
    common = ["train", "--data", str(data), "--quiet", *ARGS, "--set", "train.order=random",
              "--set", f"train.optimizer={optimizer}"]
    single = subprocess.run([sys.executable, "-m", "scratchllm", *common, "--out", str(tmp_path / "one"),
                             "--set", "train.grad_accum=2"], env=cli_env, capture_output=True, text=True,
                            timeout=300)
    assert single.returncode == 0, single.stderr
    two = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "scratchllm", *common, "--out", str(tmp_path / "two")]
    # Half-way a token budget stops it (the schedule stays that of 10 steps); then rank 0 picks the
    # checkpoint to resume from for both ranks.
    half = subprocess.run([*two, "--set", f"train.max_tokens={5 * 8 * 64 * 2}"], env=cli_env,
                          capture_output=True, text=True, timeout=300)
    assert half.returncode == 0, half.stderr[-3000:]
    assert "(reached the token budget" in half.stdout
    ddp = subprocess.run([*two, "--resume", "--set", "train.max_tokens=0"], env=cli_env, capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert [s for s, _ in one] == [s for s, _ in two] == list(range(1, 11))
    assert np.allclose([x for _, x in one], [x for _, x in two], rtol=0, atol=1e-5)
    # rank 0 alone wrote the run: one metrics file with each line once, checkpoints from one process
    assert sorted(p.name for p in (tmp_path / "two" / "ckpt").iterdir()) == ["step_10", "step_5"]
    assert ddp.stdout.count("val loss") == 1


def test_a_data_error_on_one_rank_stops_every_rank():
    from scratchllm.runtime.distributed import Dist
    from scratchllm.util.errors import UserError

    class TwoRanks(Dist):
        """Rank 0 of a two-process job whose rank 1 reports `other`."""

        def __init__(self, other):
            super().__init__(rank=0, world_size=2)
            self.other = other

        @property
        def enabled(self):
            return True

        def gather(self, obj):
            return [obj, self.other]

    assert TwoRanks(None).on_every_rank(lambda: 7) == 7
    with pytest.raises(UserError, match="rank 1: val.bin is missing"):
        TwoRanks("rank 1: val.bin is missing").on_every_rank(lambda: 7)  # fine here, not there

    def missing():
        raise UserError("train.bin is missing")

    with pytest.raises(UserError, match="rank 0: train.bin is missing"):
        TwoRanks(None).on_every_rank(missing)
    with pytest.raises(UserError, match="^train.bin is missing$"):
        Dist().on_every_rank(missing)  # one process: the error as it is
