"""The table of loss parts (cli.LOSS_PARTS): a part is its row there and its function in losses.py; its flag, its
weight, its log keys, its curve, its resume policy and the benchmark's loss follow from the row."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import torch

import losses
from cli import LOSS_KEYS, LOSS_PARTS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--image_size", "32", "--encoder_hidden_dim", "8", "--encoder_layers", "1", "--decoder_hidden_dim", "8",
        "--decoder_layers", "1", "--seq_len", "4", "--batch_size", "2", "--num_workers", "0", "--device", "cpu",
        "--amp", "off", "--warmup_epochs", "1", "--clips_per_recording", "1"]
NEW_ROW = '    LossPart("zmean", "zmean_weight", 0.3, "weight of the mean squared latent"),\n'
NEW_FUNCTION = '''

@loss_part
def zmean(output, batch, loss):
    """Mean squared latent."""
    return output["z_seq"].float().pow(2).mean()
'''


def test_every_part_of_the_table_has_its_function_and_log_key():
    assert list(losses.PARTS) == [part.name for part in LOSS_PARTS]
    assert LOSS_KEYS == ("total", "reconstruction", *losses.PARTS)
    parts = losses.AutoencoderLoss(cls_weight=1.0)({"reconstruction": torch.zeros(1, 2, 1, 16, 16),
                                                    "z_seq": torch.zeros(1, 2, 4, 2, 2)},
                                                   {"video": torch.zeros(1, 2, 1, 16, 16)})
    assert tuple(parts) == LOSS_KEYS


def test_a_new_part_is_its_row_and_its_function(index_csv, tmp_path):
    """In a copy of the repository, one row in cli.py and one function in losses.py add a loss part: train.py takes
    its flag, weighs it into the total, logs it, draws its curve and refuses a rerun with another weight; bench.py
    and verify_data_connection.py take the flag too."""
    repo = tmp_path / "repo"
    repo.mkdir()
    for path in REPO.glob("*.py"):
        shutil.copy(path, repo)
    cli_text = (repo / "cli.py").read_text()
    end_of_table = cli_text.index("\n)\n", cli_text.index("LOSS_PARTS = (")) + 1  # the table's closing bracket
    (repo / "cli.py").write_text(cli_text[:end_of_table] + NEW_ROW + cli_text[end_of_table:])
    (repo / "losses.py").write_text((repo / "losses.py").read_text() + NEW_FUNCTION)

    def run(*args):
        return subprocess.run([sys.executable, *args], cwd=repo, capture_output=True, text=True, timeout=300)

    flags = ["--index_csv", str(index_csv), "--save_dir", str(tmp_path / "ckpt"), "--log_dir", str(tmp_path / "logs"),
             *TINY]
    trained = run("train.py", *flags, "--num_epochs", "1", "--zmean_weight", "0.3")
    assert trained.returncode == 0, trained.stderr
    entry = json.loads((tmp_path / "logs" / "training_log.json").read_text())[-1]
    assert entry["zmean"] > 0 and entry["val_zmean"] > 0
    weighted = entry["val_reconstruction"] + 0.1 * entry["val_smooth"] + 0.3 * entry["val_zmean"]
    assert abs(entry["val_total"] - weighted) < 1e-5 * max(1.0, weighted)
    refused = run("train.py", *flags, "--num_epochs", "2", "--zmean_weight", "0.5")
    assert refused.returncode == 2 and "--zmean_weight 0.3 (now 0.5)" in refused.stderr
    check = ("import json, sys, bench, checkpoint, latent_figures, verify_data_connection; "
             "log = json.load(open(sys.argv[1])); "
             "print(json.dumps([checkpoint.RESUME_FLAGS['zmean_weight'], latent_figures.curve_titles(log)['zmean'], "
             "bench.get_args_parser().get_default('zmean_weight'), "
             "verify_data_connection.get_args_parser().get_default('zmean_weight')]))")
    derived = run("-c", check, str(tmp_path / "logs" / "training_log.json"))
    assert json.loads(derived.stdout) == ["refuse", "zmean", 0.3, 0.3], derived.stderr
    assert "weight of the mean squared latent (default: 0.3)" in " ".join(run("train.py", "--help").stdout.split())
