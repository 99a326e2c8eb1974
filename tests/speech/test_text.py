from simslm.speech import text


def test_speakable_maps_unicode_punctuation_and_whitespace():
    spoken = text.speakable("Lily\u2019s dog\u2014named \u201cRex\u201d\u2014ran.\nThe  end \u2026")
    assert spoken == "Lily's dog, named \"Rex\", ran. The end ..."


def test_words_keep_apostrophes_and_hyphens_and_spans_index_the_text():
    sentence = "Timmy's three-year-old dog, e.g. Rex, said: \"Hi!\""
    spans = text.words_with_spans(sentence)
    assert [w for w, _, _ in spans] == ["Timmy's", "three-year-old", "dog", "e", "g", "Rex", "said", "Hi"]
    assert all(sentence[start:end] == word for word, start, end in spans)


def test_same_words_ignores_case_and_punctuation_but_not_words():
    assert text.same_words("MISTER QUILTER is", ["mister", "Quilter,", "IS"])
    assert not text.same_words("the apostle", ["the"])
    assert not text.same_words("the apostle", ["the", "apostles"])
