"""Kernel choices measured on the machine and remembered per machine and versions
(keras_vitmsn/backend/calibration.py)."""

import json

import pytest

from keras_vitmsn.backend import calibration


@pytest.fixture
def calibration_file(monkeypatch, tmp_path):
    path = tmp_path / "sub" / "calibration.json"
    monkeypatch.setenv(calibration.LOCATION, str(path))
    calibration.clear_memory()
    yield path
    calibration.clear_memory()


def test_a_choice_is_measured_once_then_read_back(calibration_file):
    calls = []

    def measure():
        calls.append(1)
        return "b"

    assert calibration.decide("kernel", "lib 1.0", ("a", "b"), measure) == "b"
    assert calibration.decide("kernel", "lib 1.0", ("a", "b"), measure) == "b"
    assert len(calls) == 1
    data = json.loads(calibration_file.read_text())
    assert data["format"] == calibration.FORMAT
    (entry,) = data["choices"]
    assert entry.startswith("kernel | ") and calibration.cpu_description() in entry
    assert entry.endswith("lib 1.0") and data["choices"][entry]["choice"] == "b"
    # Another process: nothing in memory, the file answers.
    calibration.clear_memory()
    assert calibration.decide("kernel", "lib 1.0", ("a", "b"), lambda: pytest.fail()) == "b"


def test_another_library_version_or_an_unknown_answer_is_measured_again(calibration_file):
    calibration.decide("kernel", "lib 1.0", ("a", "b"), lambda: "b")
    assert calibration.decide("kernel", "lib 2.0", ("a", "b"), lambda: "a") == "a"
    calibration.clear_memory()
    # Both remembered, side by side.
    assert calibration.decide("kernel", "lib 1.0", ("a", "b"), lambda: pytest.fail()) == "b"
    assert calibration.decide("kernel", "lib 2.0", ("a", "b"), lambda: pytest.fail()) == "a"
    calibration.clear_memory()
    # An answer this version does not offer (written by another version) is re-measured.
    assert calibration.decide("kernel", "lib 1.0", ("a", "c"), lambda: "c") == "c"
    with pytest.raises(ValueError, match="returned 'z'"):
        calibration.decide("other", "lib 1.0", ("a", "b"), lambda: "z")


@pytest.mark.parametrize("content", ["{not json", '{"format": "other"}', '["a"]', ""])
def test_a_damaged_file_is_measured_again_and_rewritten(calibration_file, content):
    calibration_file.parent.mkdir(parents=True)
    calibration_file.write_text(content)
    assert calibration.decide("kernel", "v", ("a", "b"), lambda: "a") == "a"
    assert json.loads(calibration_file.read_text())["format"] == calibration.FORMAT


def test_off_measures_every_process_and_writes_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv(calibration.LOCATION, "off")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    calibration.clear_memory()
    assert calibration.cache_path() is None
    assert calibration.decide("kernel", "v", ("a", "b"), lambda: "b") == "b"
    assert list(tmp_path.iterdir()) == []
    calibration.clear_memory()


def test_the_file_lives_in_keras_home_by_default(monkeypatch, tmp_path):
    monkeypatch.delenv(calibration.LOCATION, raising=False)
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    assert calibration.cache_path() == str(tmp_path / "keras_vitmsn" / "calibration.json")


def test_an_unwritable_location_still_decides(monkeypatch, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv(calibration.LOCATION, str(blocker / "calibration.json"))
    calibration.clear_memory()
    assert calibration.decide("kernel", "v", ("a", "b"), lambda: "b") == "b"
    calibration.clear_memory()


def test_cpu_description_names_the_model_and_the_vector_extensions(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text(
        "processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7R13\n"
        "flags\t\t: fpu sse avx2 fma avx512f ht\nprocessor\t: 1\nmodel name\t: ignored\n"
    )
    assert calibration.cpu_description(str(info)) == "AMD EPYC 7R13 [avx2 avx512f fma]"
    assert calibration.cpu_description(str(tmp_path / "missing")).endswith("[]")


class _Clock:
    """A perf_counter that advances by the duration of the kernel that just ran."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def kernel(self, seconds):
        def run():
            self.now += seconds

        return run


@pytest.mark.parametrize(
    "a, b, winner",
    [(4.0, 1.0, "b"), (1.0, 4.0, "a"), (1.0, 0.97, "a"), (1.0, 0.9, "b"), (2.0, 2.0, "a")],
)
def test_fastest_keeps_the_default_on_a_near_tie_and_picks_a_clear_winner(
    monkeypatch, a, b, winner
):
    clock = _Clock()
    monkeypatch.setattr(calibration.time, "perf_counter", clock)
    assert calibration.fastest({"a": clock.kernel(a), "b": clock.kernel(b)}) == winner


def test_fastest_compares_best_runs_so_a_disturbed_run_does_not_decide(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr(calibration.time, "perf_counter", clock)
    durations = iter([1.0, 9.0, 1.0, 1.0])  # warm-up, then one disturbed run of three

    def a():
        clock.now += next(durations)

    assert calibration.fastest({"a": a, "b": clock.kernel(1.5)}, repeats=3) == "a"
