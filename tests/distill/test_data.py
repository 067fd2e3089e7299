import json
import subprocess
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stillroom.core.errors import DataError
from stillroom.distill.data import LabelMap, read_records, split_records
from tests.conftest import REPO, shared_data


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_reads_csv_tsv_jsonl_and_parquet(tmp_path):
    csv_path = write(tmp_path, "a.csv", 'text,label\n"hello, world",greet\nbye,leave\n')
    tsv_path = write(tmp_path, "a.tsv", "sentence\tlabel\nit is \"good\"\t1\nbad\t0\n")
    jsonl_path = write(tmp_path, "a.jsonl", '{"text": "hi", "label": 1}\n\n{"text": "yo", "label": 0}\n')
    parquet_path = tmp_path / "a.parquet"
    pq.write_table(pa.table({"text": ["x", "y"], "label": ["p", "q"]}), parquet_path)

    assert read_records(csv_path).texts == ["hello, world", "bye"]
    tsv = read_records(tsv_path, text_column="sentence")
    assert tsv.texts == ['it is "good"', "bad"] and tsv.labels == ["1", "0"]
    jsonl = read_records(jsonl_path)
    assert jsonl.labels == ["1", "0"] and jsonl.lines == [1, 3]
    assert read_records(parquet_path).labels == ["p", "q"]


@pytest.mark.parametrize("name,content,message,where", [
    ("missing.csv", "sentence,label\nhi,a\n", "no column named 'text'; the columns are: sentence, label", "missing.csv"),
    ("empty_text.csv", "text,label\nfine,a\n  ,b\nok,a\n,c\n", "empty text (and 1 more line like it)", "line 3"),
    ("empty.csv", "", "the file is empty", "empty.csv"),
    ("header_only.csv", "text,label\n", "no data rows", "header_only.csv"),
    ("bad.jsonl", '{"text": "a", "label": 1}\n{"text": "b", label: 2}\n', "not valid JSON", "line 2"),
    ("wide.csv", "text,label\na,b,c\n", "has 3 fields but the header has 2", "line 2"),
    ("short.csv", "text,label\nfine,a\nno label here\n", "has 1 fields but the header has 2", "line 3"),
])
def test_bad_input_names_the_file_line_and_fix(tmp_path, name, content, message, where):
    path = write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_records(path)
    rendered = info.value.render()
    assert message in rendered and where in rendered and name in rendered


def test_undecodable_bytes_give_line_and_column(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\nok,a\ncaf\xe9 au lait,b\n".encode("latin-1"))
    with pytest.raises(DataError) as info:
        read_records(path)
    assert "line 3, column 4" in info.value.render() and "iconv" in info.value.render()


def test_drop_empty_skips_and_counts(tmp_path):
    path = write(tmp_path, "some_empty.csv", "text,label\nfine,a\n,b\nok,a\n")
    records = read_records(path, drop_empty=True)
    assert records.texts == ["fine", "ok"] and records.skipped == 1


def test_test_label_never_seen_in_train_is_an_error(tmp_path):
    train = read_records(write(tmp_path, "train.csv", "text,label\n" + "".join(f"t{i},{'ab'[i % 2]}\n" for i in range(20))))
    test = read_records(write(tmp_path, "test.csv", "text,label\nx,a\ny,b\nz,zebra\n"))
    with pytest.raises(DataError) as info:
        split_records(train, 0.2, 0.0, seed=0, test_records=test)
    assert "'zebra' never appears in the training split" in info.value.render()
    assert "test.csv, line 4" in info.value.render()


def test_split_is_seeded_and_stratified(tmp_path):
    rows = "".join(f"text {i},{'abc'[i % 3]}\n" for i in range(300))
    records = read_records(write(tmp_path, "d.csv", "text,label\n" + rows))
    first = split_records(records, 0.1, 0.2, seed=3)
    again = split_records(records, 0.1, 0.2, seed=3)
    other = split_records(records, 0.1, 0.2, seed=4)
    assert first.test.texts == again.test.texts and first.test.texts != other.test.texts
    assert (len(first.train), len(first.validation), len(first.test)) == (216, 24, 60)
    assert sorted(first.test.labels.count(c) for c in "abc") == [20, 20, 20]
    assert not set(first.train.texts) & set(first.test.texts)


def test_label_map_sorts_numbers_numerically_and_round_trips(tmp_path):
    labels = LabelMap.from_labels(["10", "2", "1"])
    assert labels.names == ["1", "2", "10"]
    labels.save(tmp_path / "labels.json")
    assert LabelMap.load(tmp_path / "labels.json").names == labels.names
    assert json.loads((tmp_path / "labels.json").read_text())["labels"] == ["1", "2", "10"]


def test_real_banking77_reads_with_all_77_labels():
    records = read_records(shared_data("banking77", "train.csv"), text_column="text", label_column="category")
    assert len(records) == 10003 and len(LabelMap.from_labels(records.labels)) == 77


def test_cli_reports_bad_data_in_one_line_without_traceback(tmp_path):
    path = write(tmp_path, "bad.csv", "words,label\nhi,a\n")
    result = subprocess.run([sys.executable, "-m", "stillroom", "distill", "--data", str(path), "--output-dir", str(tmp_path)],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2
    assert "error:" in result.stderr and "no column named 'text'" in result.stderr and "data.text_column" in result.stderr
    assert "Traceback" not in result.stderr


def test_recipe_errors_name_the_key_as_written():
    from stillroom.core.errors import RecipeError
    from stillroom.core.recipe import apply_overrides, validate
    from stillroom.distill.config import ClassifierRecipe

    cases = {
        "unknown key 'Training'; did you mean 'training'?": {"Training": {}},
        "unknown key 'training.Epochs'; did you mean 'epochs'?": {"training": {"Epochs": 1}},
        "losses.0.temperature: Input should be a valid number": {"losses": [{"name": "hinton_kd", "temperature": "hot"}]},
        "temperature applies to hinton_kd only": {"losses": [{"name": "logit_mse", "temperature": 3}]},
        "alpha applies to hinton_kd and pseudo_label only": {"losses": [{"name": "ce", "alpha": 0.3}]},
        "test_path, validation_path and unlabeled need data.path too": {"data": {"test_path": "x.csv"}},
    }
    for message, data in cases.items():
        with pytest.raises(RecipeError, match=message.replace("?", r"\?").replace(".", r"\.")):
            validate(ClassifierRecipe, data)
    recipe = apply_overrides({"losses": [{"name": "hinton_kd"}]}, ["losses.0.temperature=4"])
    assert validate(ClassifierRecipe, recipe).losses[0].temperature == 4.0
    with pytest.raises(RecipeError, match="index from 0 to 0"):
        apply_overrides(recipe, ["losses.2.alpha=1"])


def test_resolved_recipe_round_trips(tmp_path):
    from stillroom.core.recipe import dump_recipe, load_recipe
    from stillroom.distill.config import ClassifierRecipe

    recipe = load_recipe(ClassifierRecipe, "classifier", ["losses=[{name: hinton_kd}, {name: hidden_cosine}]"])
    dump_recipe(recipe, tmp_path / "resolved.yaml")
    assert load_recipe(ClassifierRecipe, tmp_path / "resolved.yaml") == recipe
    assert recipe.losses[0].kd_temperature == 2.0 and recipe.losses[1].temperature is None


def test_cli_reports_recipe_mistakes_with_allowed_values(tmp_path):
    result = subprocess.run([sys.executable, "-m", "stillroom", "distill", "--set", "training.schedulr=cosine",
                             "--set", "student.kind=tiny"], capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "unknown key 'training.schedulr'; did you mean 'scheduler'?" in result.stderr
    assert "student.kind: 'tiny' is not allowed; allowed values: 'layers' or 'config'" in result.stderr
