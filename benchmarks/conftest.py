"""pytest-benchmark options for the overhead suite, and the ratio tables printed at the end of the run."""
import torch

import overhead


def pytest_addoption(parser):
    group = parser.getgroup("overhead", "solver overhead benchmarks (benchmarks/overhead.py)")
    group.addoption("--overhead-device", default="cuda" if torch.cuda.is_available() else "cpu")
    group.addoption("--overhead-batch", type=int, default=overhead.BATCH)
    group.addoption("--overhead-threads", type=int, default=1, help="torch CPU threads (the machine is shared)")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if overhead.DONE:
        terminalreporter.write_sep("=", "solver overhead (paste into the README)")
        terminalreporter.write_line(overhead.format_tables(
            overhead.DONE, config.getoption("--overhead-device"), config.getoption("--overhead-batch"),
            config.getoption("--overhead-threads")))
