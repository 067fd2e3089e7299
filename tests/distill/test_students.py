import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertForSequenceClassification

from stillroom.core.errors import ModelError
from stillroom.core.errors import StillroomError
from stillroom.distill.config import StudentConfig
from stillroom.distill.models import build_student, find_layer_list, select_layers, spread_layers, trim_vocabulary


@pytest.fixture
def teacher():
    torch.manual_seed(0)
    config = BertConfig(vocab_size=100, hidden_size=16, num_hidden_layers=6, num_attention_heads=2,
                        intermediate_size=32, num_labels=3)
    return BertForSequenceClassification(config).eval()


def test_spread_layers_reproduces_distilbert():
    assert spread_layers(12, 6) == [0, 2, 4, 7, 9, 11]
    assert spread_layers(6, 2) == [0, 5]
    assert spread_layers(6, 3) == [0, 3, 5]
    assert spread_layers(6, 6) == list(range(6))
    assert spread_layers(6, 1) == [0], "one rule with the LLM students: one layer keeps the first"
    with pytest.raises(StillroomError, match="cannot keep 7 of the teacher's 6 layers"):
        spread_layers(6, 7)


def test_selected_layers_are_copies_of_the_teachers(teacher):
    student = select_layers(teacher, [1, 4])
    blocks = find_layer_list(student)[2]
    assert len(blocks) == 2 and student.config.num_hidden_layers == 2
    teacher_blocks = find_layer_list(teacher)[2]
    for kept, source in zip(blocks, (1, 4)):
        for (name, p), (_, q) in zip(kept.named_parameters(), teacher_blocks[source].named_parameters()):
            assert torch.equal(p, q), name
    assert torch.equal(student.bert.embeddings.word_embeddings.weight, teacher.bert.embeddings.word_embeddings.weight)
    # The student is a copy: training it leaves the teacher alone.
    assert student.bert.embeddings.word_embeddings.weight.data_ptr() != teacher.bert.embeddings.word_embeddings.weight.data_ptr()
    assert len(find_layer_list(teacher)[2]) == 6


def test_keeping_every_layer_reproduces_the_teacher(teacher):
    ids = torch.randint(0, 100, (2, 7))
    student = select_layers(teacher, list(range(6))).eval()
    assert torch.allclose(student(input_ids=ids).logits, teacher(input_ids=ids).logits, atol=1e-6)


def test_layer_student_saves_and_loads_with_plain_transformers(teacher, tmp_path):
    student, layers = build_student(teacher, StudentConfig(num_layers=3))
    assert layers == [0, 3, 5]
    student.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 100, (1, 5))
    assert torch.allclose(reloaded(input_ids=ids).logits, student.eval()(input_ids=ids).logits, atol=1e-6)


def test_bad_layer_choice_is_a_clear_error(teacher):
    with pytest.raises(ModelError, match="distinct indices in 0..5"):
        select_layers(teacher, [0, 9])


def test_smaller_config_student(teacher):
    student, layers = build_student(teacher, StudentConfig(kind="config", num_layers=1, hidden_size=8, num_attention_heads=2))
    assert layers is None and student.config.hidden_size == 8 and student.config.num_hidden_layers == 1


def test_trimmed_vocabulary_tokenizes_the_data_identically(tiny_encoder_dir):
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = AutoModelForSequenceClassification.from_pretrained(tiny_encoder_dir, num_labels=2).eval()
    texts = ["my card was declined at the supermarket", "how do I change my PIN?", "transfer pending since monday"]
    old_ids = tokenizer(texts)["input_ids"]
    before = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits
    model, trimmed, kept = trim_vocabulary(model, tokenizer, texts)
    assert len(kept) < 3000 and model.get_input_embeddings().num_embeddings == len(kept)
    new_ids = trimmed(texts)["input_ids"]
    assert [[kept[i] for i in row] for row in new_ids] == old_ids
    after = model(**trimmed(texts, padding=True, return_tensors="pt")).logits
    assert torch.allclose(before, after, atol=1e-5)
    # Unseen words still tokenize (into smaller pieces), never into errors.
    assert trimmed("zyxwvut quokka")["input_ids"]


def test_teacher_folder_without_tokenizer_is_a_clear_error(tmp_path):
    from stillroom.distill.config import TeacherConfig
    from stillroom.distill.data import LabelMap
    from stillroom.distill.models import load_teacher

    BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32)).save_pretrained(tmp_path)
    with pytest.raises(ModelError, match="tokenizer files are probably missing"):
        load_teacher(TeacherConfig(path=str(tmp_path)), LabelMap(["a", "b"]))


def test_hidden_losses_match_copied_layers_by_default():
    from stillroom.distill.config import LossConfig
    from stillroom.distill.losses import build_losses

    loss = build_losses([LossConfig(name="hidden_mse")], 2, 6, 16, 16, kept_layers=[0, 5])
    assert loss.terms[0].layer_map == {1: 1, 2: 6}
    assert build_losses([LossConfig(name="hidden_mse")], 2, 6, 16, 16).terms[0].layer_map == {1: 3, 2: 6}
