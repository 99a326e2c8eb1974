import json

from simslm.speech.corpus import read_corpus, read_texts, split_corpus_spec


def test_a_slice_spec_keeps_the_corpus_line_numbers():
    assert split_corpus_spec("tinystories-sample[2000:2100]") == ("tinystories-sample", 2000, 2100)
    assert split_corpus_spec("stories.jsonl[5:]") == ("stories.jsonl", 5, None)
    assert split_corpus_spec("plain.txt") == ("plain.txt", 0, None)
    lines = list(read_corpus("tinystories-sample[10:13]"))
    assert [index for index, _, _ in lines] == [10, 11, 12] and all(value for _, value, _ in lines)


def test_bad_jsonl_lines_are_reported_not_raised(tmp_path):
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join([json.dumps({"text": "One."}), "{not json", json.dumps({"body": "x"}),
                                 json.dumps({"text": 3})]) + "\n")
    assert list(read_texts(corpus)) == [(0, "One.", ""), (1, None, "line is not valid JSON"),
                                        (2, None, "no string field 'text'"), (3, None, "no string field 'text'")]


def test_plain_text_is_one_text_per_line(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("first line\nsecond line\n")
    assert [value for _, value, _ in read_texts(corpus)] == ["first line", "second line"]


def test_a_byte_order_mark_opening_a_file_is_not_part_of_its_first_text(tmp_path):
    # Notepad and Excel open UTF-8 files with one; synth had spoken it into the first transcript ("\ufeffOnce").
    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"\xef\xbb\xbfOnce upon a time.\r\n\xef\xbb\xbfSecond.\n")
    assert [value for _, value, _ in read_texts(corpus)] == ["Once upon a time.", "\ufeffSecond."]
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"\xef\xbb\xbf" + json.dumps({"text": "One."}).encode() + b"\n")
    assert list(read_texts(corpus)) == [(0, "One.", "")]
