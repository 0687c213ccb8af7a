"""`python -m bliperax.train` whose checkpoint of one step takes `seconds` longer to finish.

  python tests/slow_save_train.py STEP SECONDS --config=... --workdir=... [--config.x=y]

Test-only: the trainer's code is untouched; Orbax's last act of an asynchronous save
(renaming `<step>.orbax-checkpoint-tmp` to `<step>`, in its background thread) waits
`seconds` first for that one step. The save is then reliably in flight for that long,
long enough for a test to see its temporary directory and signal the process during
it, while the training loop goes on (until it starts another save, which waits for it).
"""
import asyncio
import runpy
import sys

from orbax.checkpoint._src.path import atomicity


def _delay_finalize(step: int, seconds: float) -> None:
  finalize = atomicity.AtomicRenameTemporaryPath.finalize

  async def slow_finalize(self, *args, **kwargs):
    if self.get_final().name == str(step):
      await asyncio.sleep(seconds)
    return await finalize(self, *args, **kwargs)

  atomicity.AtomicRenameTemporaryPath.finalize = slow_finalize


if __name__ == "__main__":
  if len(sys.argv) < 3:
    sys.exit(__doc__)
  _delay_finalize(int(sys.argv[1]), float(sys.argv[2]))
  sys.argv = [sys.argv[0]] + sys.argv[3:]
  runpy.run_module("bliperax.train", run_name="__main__", alter_sys=True)
