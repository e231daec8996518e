"""A pytest plugin for short GPU windows (``-p gpu_pytest_report``, with scripts/ on the path):

``--gpu-report=PATH``        a JUnit XML report rewritten after every test (pytest's own
                             ``--junitxml`` is written only when the session ends, so a run
                             stopped at its time budget would leave none);
``--gpu-test-timeout=SECS``  a test still running after SECS seconds is failed (SIGALRM raises in
                             it) and the next one starts; 0 = no limit. A test stuck inside one
                             long C call is interrupted only when that call returns.

scripts/gpu_check.py's ``gpu_tests`` step uses both."""

from __future__ import annotations

import os
import signal
import time
import xml.etree.ElementTree as ET

import pytest


class TestTimeout(Exception):
    """Raised in a test that ran past ``--gpu-test-timeout``."""


def pytest_addoption(parser):
    g = parser.getgroup("gpu_pytest_report")
    g.addoption("--gpu-report", default=None, help="JUnit XML rewritten after every test")
    g.addoption("--gpu-test-timeout", type=float, default=0.0,
                help="seconds per test before it is failed (0: no limit)")


class Report:
    def __init__(self, path: str | None, timeout: float):
        self.path, self.timeout = path, timeout
        self.cases: dict[str, ET.Element] = {}
        self.t0 = time.time()

    def _case(self, report) -> ET.Element:
        case = self.cases.get(report.nodeid)
        if case is None:
            module, _, name = report.nodeid.partition("::")
            case = ET.Element("testcase", classname=module.removesuffix(".py").replace("/", "."),
                              name=name, time="0")
            self.cases[report.nodeid] = case
        return case

    def write(self) -> None:
        if not self.path:
            return
        cases = list(self.cases.values())
        n_fail = sum(c.find("failure") is not None for c in cases)
        n_err = sum(c.find("error") is not None for c in cases)
        n_skip = sum(c.find("skipped") is not None for c in cases)
        suite = ET.Element("testsuite", name="pytest", tests=str(len(cases)), failures=str(n_fail),
                           errors=str(n_err), skipped=str(n_skip),
                           time=f"{time.time() - self.t0:.3f}")
        suite.extend(cases)
        root = ET.Element("testsuites")
        root.append(suite)
        tmp = self.path + ".tmp"
        ET.ElementTree(root).write(tmp, encoding="utf-8", xml_declaration=True)
        os.replace(tmp, self.path)

    @pytest.hookimpl(hookwrapper=True)
    def pytest_runtest_call(self, item):
        use = self.timeout > 0 and hasattr(signal, "SIGALRM")
        if use:
            def expired(signum, frame):
                raise TestTimeout(f"the test ran past --gpu-test-timeout={self.timeout:g}s")

            old = signal.signal(signal.SIGALRM, expired)
            signal.setitimer(signal.ITIMER_REAL, self.timeout)
        try:
            yield
        finally:
            if use:
                signal.setitimer(signal.ITIMER_REAL, 0)
                signal.signal(signal.SIGALRM, old)

    def pytest_runtest_logreport(self, report):
        case = self._case(report)
        case.set("time", f"{float(case.get('time')) + report.duration:.3f}")
        if report.skipped and case.find("skipped") is None:
            ET.SubElement(case, "skipped", message=str(report.longrepr)[-500:])
        elif report.failed:
            tag = "failure" if report.when == "call" else "error"
            text = str(report.longreprtext)[-4000:]
            el = ET.SubElement(case, tag, message=(text.strip().splitlines() or [""])[-1][:300])
            el.text = text
        if report.when == "teardown" or report.failed or report.skipped:
            self.write()

    def pytest_sessionfinish(self, session):
        self.write()


def pytest_configure(config):
    report = Report(config.getoption("--gpu-report"), config.getoption("--gpu-test-timeout"))
    config.pluginmanager.register(report, "gpu_pytest_report_instance")
