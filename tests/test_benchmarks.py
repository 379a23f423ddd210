"""Benchmarks: a fixed prompt slice with stable ids, independent of the sampling seed (SPEC §7)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from entrgi.benchmarks import BenchmarkConfig, DatasetBenchmark
from entrgi.components import build
from entrgi.validation import ConfigError

# Row index -> (prompt, category). Row 2 is empty, row 5 blank, row 4 repeats row 0's prompt.
ROWS = [
    ("alpha", "a"),
    ("beta", "b"),
    ("", "a"),
    ("gamma", "a"),
    ("alpha", "b"),
    ("   ", "b"),
    ("delta", "b"),
    ("epsilon", "a"),
    ("zeta", "b"),
    ("eta", "a"),
    ("theta", "b"),
    ("iota", "a"),
]
# Kept, in file order, with ids `{split}-{row index}`: the file's row, not the position after dropping.
KEPT = {
    "train-0": "alpha", "train-1": "beta", "train-3": "gamma", "train-6": "delta", "train-7": "epsilon",
    "train-8": "zeta", "train-9": "eta", "train-10": "theta", "train-11": "iota",
}


@pytest.fixture
def prompts_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"text": p, "kind": c, "uid": f"u{i}"}) + "\n" for i, (p, c) in enumerate(ROWS)))
    return path


def _bench(path, **kw) -> DatasetBenchmark:
    return DatasetBenchmark(BenchmarkConfig(name="local", path=str(path), prompt_field="text", **kw))


def test_empty_and_duplicate_prompts_are_dropped_and_ids_name_file_rows(prompts_file):
    prompts = _bench(prompts_file).prompts()
    assert {p.id: p.text for p in prompts} == KEPT
    assert [p.id for p in prompts] == list(KEPT)  # file order


def test_id_field_is_used_when_given(prompts_file):
    prompts = _bench(prompts_file, id_field="uid").prompts()
    assert [p.id for p in prompts][:3] == ["u0", "u1", "u3"]


def test_slice_is_fixed_by_n_prompts_and_slice_seed(prompts_file):
    """n_prompts draws a subset in file order; the same (n, slice_seed) always gives the same one."""
    full = _bench(prompts_file).prompts()
    first = _bench(prompts_file, n_prompts=4, slice_seed=0).prompts()
    assert len(first) == 4
    assert set(first) <= set(full)
    assert [p.id for p in first] == [p.id for p in full if p in first]  # order kept
    assert _bench(prompts_file, n_prompts=4, slice_seed=0).prompts() == first
    slices = {tuple(p.id for p in _bench(prompts_file, n_prompts=4, slice_seed=s).prompts()) for s in range(5)}
    assert len(slices) > 1, "slice_seed has no effect"


def test_n_prompts_larger_than_the_benchmark_keeps_everything(prompts_file):
    assert [p.id for p in _bench(prompts_file, n_prompts=100).prompts()] == list(KEPT)


def test_category_filter_keeps_ids(prompts_file):
    """Only category b; 'alpha' of row 4 is no longer a duplicate once row 0 is filtered out."""
    prompts = _bench(prompts_file, category_field="kind", categories=["b"]).prompts()
    assert [(p.id, p.text) for p in prompts] == [
        ("train-1", "beta"), ("train-4", "alpha"), ("train-6", "delta"), ("train-8", "zeta"), ("train-10", "theta"),
    ]
    assert {p.category for p in prompts} == {"b"}
    unfiltered = _bench(prompts_file, category_field="kind").prompts()
    assert {p.category for p in unfiltered} == {"a", "b"}


@pytest.mark.parametrize("field", ["prompt_field", "category_field", "id_field"])
def test_a_wrong_field_names_it(prompts_file, field):
    kw = {"prompt_field": "text", field: "questionn"}
    bench = DatasetBenchmark(BenchmarkConfig(name="local", path=str(prompts_file), **kw))
    with pytest.raises(ConfigError, match=f"benchmark.{field}='questionn'") as info:
        bench.prompts()
    assert "text" in str(info.value)  # lists the fields there are


def test_nothing_left_is_an_error(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text(json.dumps({"text": ""}) + "\n" + json.dumps({"text": "  "}) + "\n")
    with pytest.raises(ConfigError, match="benchmark.prompt_field='text': no non-blank prompt"):
        _bench(path).prompts()


def test_parquet_gives_the_same_prompts(prompts_file, tmp_path):
    import datasets

    parquet = tmp_path / "prompts.parquet"
    datasets.load_dataset("json", data_files=str(prompts_file), split="train").to_parquet(str(parquet))
    assert _bench(parquet).prompts() == _bench(prompts_file).prompts()


def test_prompts_group_slice_ignores_everything_but_the_benchmark(compose, prompts_file):
    """benchmark=prompts through Hydra: the slice depends on (n_prompts, slice_seed) only."""
    common = ["benchmark=prompts", f"benchmark.path='{prompts_file}'", "benchmark.prompt_field=text",
              "benchmark.n_prompts=3"]
    reference = build(compose(common).benchmark).prompts()
    assert len(reference) == 3
    for extra in (["seed=7"], ["guidance=none", "schedule=origin", "sampler.num_samples=2"], ["model=tiny"]):
        assert build(compose(common + extra).benchmark).prompts() == reference, extra
    other = [build(compose(common + [f"benchmark.slice_seed={s}"]).benchmark).prompts() for s in (1, 2, 3)]
    assert any(o != reference for o in other)


def test_tiny_benchmark(compose):
    prompts = build(compose(["experiment=tiny"]).benchmark).prompts()
    assert [p.id for p in prompts] == [f"tiny-{i}" for i in range(32)]
    assert prompts[0].text == "Describe a grey frog that sleeps by the field." and prompts[0].category == "full"


def test_duplicate_ids_are_refused_naming_the_id_and_its_rows(tmp_path):
    """Results are keyed by prompt id: two rows with one id would make a resumed run drop prompts."""
    path = tmp_path / "dup.jsonl"
    path.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for t, i in [("x", "a"), ("y", "b"), ("z", "a")]))
    with pytest.raises(ConfigError, match=r"benchmark.id_field='id': id 'a' is used by rows 0, 2 of"):
        _bench(path, id_field="id").prompts()


@pytest.mark.parametrize(("content", "message"), [
    (b"", "is empty"),
    (b"  \n\n", "is empty"),
    (b'{"text": "caf\xe9"}\n', r"is not UTF-8 text \(line 1, byte 13\)"),
    (b'{"text": "a"}\n{"text": "b"\n', "line 2 is not valid JSON"),
])
def test_unreadable_prompt_files_name_the_key_and_the_fault(tmp_path, content, message):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    with pytest.raises(ConfigError, match=f"benchmark.path=.*{message}"):
        _bench(path).prompts()


def test_an_unknown_category_lists_the_categories(prompts_file):
    with pytest.raises(ConfigError, match=r"benchmark.categories: c not in .*\(categories: a, b\)"):
        _bench(prompts_file, category_field="kind", categories=["b", "c"]).prompts()
    with pytest.raises(ConfigError, match="needs benchmark.category_field"):
        _bench(prompts_file, categories=["b"]).prompts()


def test_no_path_and_unknown_suffix_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="benchmark.path is empty"):
        _bench("").prompts()
    (tmp_path / "p.txt").write_text("hello\n")
    with pytest.raises(ConfigError, match="expected a .jsonl, .json, .csv or .parquet file"):
        _bench(tmp_path / "p.txt").prompts()


def test_n_prompts_beyond_the_benchmark_is_said_once(prompts_file, caplog):
    with caplog.at_level("WARNING", logger="entrgi.benchmarks"):
        _bench(prompts_file, n_prompts=100).prompts()
    assert [r.getMessage() for r in caplog.records if "n_prompts" in r.getMessage()] == [
        f"benchmark.n_prompts=100 but {prompts_file} has 9 prompts: using all 9"]


def _as_dataset(prompts_file):
    import datasets

    return datasets.load_dataset("json", data_files=str(prompts_file), split="train")


@pytest.mark.parametrize("layout", ["json", "csv", "parquet", "save_to_disk", "save_to_disk_dict", "data_folder"])
def test_every_documented_source_gives_the_same_prompts(prompts_file, tmp_path, layout):
    """Local files of each format and dataset folders in every layout `datasets` writes."""
    import datasets

    rows = _as_dataset(prompts_file)
    split = "train"
    if layout == "json":
        target = tmp_path / "prompts.json"
        target.write_text(json.dumps(rows.to_list()))
    elif layout == "csv":
        target = tmp_path / "prompts.csv"
        rows.to_csv(str(target))
    elif layout == "parquet":
        target = tmp_path / "prompts.parquet"
        rows.to_parquet(str(target))
    elif layout == "save_to_disk":
        target = tmp_path / "saved"
        rows.save_to_disk(str(target))
    elif layout == "save_to_disk_dict":
        target, split = tmp_path / "saved_dict", "test"
        datasets.DatasetDict({"test": rows, "other": rows.select([0])}).save_to_disk(str(target))
    else:
        target, split = tmp_path / "folder", "test"
        target.mkdir()
        rows.to_parquet(str(target / "test.parquet"))
    got = _bench(target, split=split).prompts()
    expected = [dataclasses.replace(p, id=p.id.replace("train-", f"{split}-")) for p in _bench(prompts_file).prompts()]
    assert got == expected
    if layout in ("save_to_disk_dict", "data_folder"):
        with pytest.raises(ConfigError, match=r"benchmark.split='dev' is not in .*\(splits: "):
            _bench(target, split="dev").prompts()


def test_a_hub_id_loads_from_the_datasets_cache(prompts_file, tmp_path, monkeypatch):
    """What `load_dataset("org/name")` leaves in HF_DATASETS_CACHE is read offline, by id."""
    import datasets
    from datasets.packaged_modules.json.json import Json

    cache = tmp_path / "hf-datasets"
    builder = Json(cache_dir=str(cache), dataset_name="someorg___tiny-prompts", hash="0123abcd",
                   data_files={"test": str(prompts_file)})
    builder.download_and_prepare()
    # The Hub's layout: <org>___<name>/<config>/<version>/<revision>/<name>-<split>.arrow
    (prepared,) = (cache / "someorg___tiny-prompts").iterdir()
    prepared = prepared.rename(prepared.with_name("default"))
    revision = prepared / "0.0.0" / "0123abcd"
    (revision / "someorg___tiny-prompts-test.arrow").rename(revision / "tiny-prompts-test.arrow")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    got = _bench("someorg/tiny-prompts", split="test").prompts()
    assert [p.text for p in got] == list(KEPT.values())
