"""A rerun meets a stage output made by another command (or from remade inputs): it
is renamed aside, never resumed into (the trainer would refuse) nor deleted."""
from bliperax.sweep import runner


def test_set_aside_renames_and_numbers(tmp_path):
  out = tmp_path / "pretrain"
  assert runner.set_aside(str(out)) is None  # nothing there
  out.mkdir()
  (out / "metrics.jsonl").write_text("{}\n")
  assert runner.set_aside(str(out)) == f"{out}.replaced-1"
  assert not out.exists() and (tmp_path / "pretrain.replaced-1" / "metrics.jsonl").exists()
  out.mkdir()
  assert runner.set_aside(str(out)) == f"{out}.replaced-2"  # earlier ones are kept
  (tmp_path / "eval.json").write_text("{}")
  assert runner.set_aside(str(tmp_path / "eval.json")) == f"{tmp_path / 'eval.json'}.replaced-1"


def test_the_command_an_output_was_made_by():
  cmd, other = ["train", "a"], ["train", "b"]
  assert runner._made_by({"made_by": cmd, "command": other, "status": "failed"}) == cmd
  # Records written before made_by was kept: a finished or interrupted attempt's command
  # made the output; a failed attempt's may have been refused before writing anything.
  assert runner._made_by({"command": cmd, "status": "done"}) == cmd
  assert runner._made_by({"command": cmd, "status": "interrupted"}) == cmd
  assert runner._made_by({"command": cmd, "status": "failed"}) is None
  assert runner._made_by({}) is None
