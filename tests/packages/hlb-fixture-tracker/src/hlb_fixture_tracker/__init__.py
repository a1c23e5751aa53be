"""--track csv[:FILE]: a line per run (arm, seed, status, accuracy, epochs) in a CSV file."""

import csv
from pathlib import Path

from hlbcli.tracking import Tracker

FIELDS = ["arm", "seed", "status", "accuracy", "epochs"]


class CsvTracker(Tracker):
    def start(self, command):
        self.path = Path(self.target) if self.target else (command.out or Path.cwd()) / "runs.csv"
        self.where = str(self.path)
        self.epochs = {}
        if not self.path.exists():
            with self.path.open("w", newline="") as f:
                csv.writer(f).writerow(FIELDS)

    def epoch(self, run, metrics):
        self.epochs[(run.arm, run.seed)] = metrics["epoch"]

    def run_end(self, run, record, path):
        with self.path.open("a", newline="") as f:
            csv.writer(f).writerow([run.arm or "", run.seed, record["status"], record["accuracy"],
                                    self.epochs.get((run.arm, run.seed), 0)])
