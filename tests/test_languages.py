import json

import pytest

from tests.conftest import SHARED_DATA, need
from xdt.errors import XdtError
from xdt.languages import language, parse_langs, registry

PAPER_41 = ("af ar bg bn bs ca cs da de el en es et fa fi fr he hi hr hu id it lt lv mk ms nl no pl pt ro ru sk sl "
            "sq sv ta tl tr uk vi").split()


def test_registry_holds_exactly_the_papers_41_languages():
    assert sorted(registry()) == sorted(PAPER_41)
    assert len(registry()) == 41


def test_every_language_has_name_script_and_split_sizes():
    scripts = {lang.script for lang in registry().values()}
    assert {"Latn", "Cyrl", "Arab", "Deva", "Hebr", "Grek", "Beng", "Taml"} <= scripts
    assert language("ru").script == "Cyrl" and language("hi").name == "Hindi"
    assert language("en").splits == {"train": 20000, "dev": 10000, "test": 10000}


def test_split_sizes_equal_dataset_infos():
    infos = json.loads(need(SHARED_DATA / "wikiann" / "dataset_infos.json").read_text())
    for code, lang in registry().items():
        splits = infos[code]["splits"]
        assert lang.splits == {"train": splits["train"]["num_examples"], "dev": splits["validation"]["num_examples"],
                               "test": splits["test"]["num_examples"]}, code


def test_unknown_language_and_empty_langs_are_clear_errors():
    with pytest.raises(XdtError, match="unknown language 'xx'"):
        language("xx")
    with pytest.raises(XdtError, match="--langs"):
        parse_langs(" , ")
    assert parse_langs("de, en") == ["de", "en"] and parse_langs(None) is None
