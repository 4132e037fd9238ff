"""The espeak-ng voices of the synthesized demo corpus (``synth.py``): training, test and dev.

Standard library only, so that ``examples/synth/prepare.sh`` reads it by path without importing the
package (which imports torch and fairseq). A voice is ``accent+variant``; the variants are the files of
espeak-ng's ``voices/!v``. Test and dev use accents and variants no training voice has; dev's variants
are neither training's nor test's. The order of a list is part of the corpus (voices are drawn by index).

Training voices: ``wide`` (the default since 2026-12-05) is four accents x 51 variants: every human
variant of espeak-ng 1.51 except test's and dev's and their relatives (steph2, steph3); left out too are
the robots, whisper, croak and the klatt synthesizers. ``narrow`` (before) is the same accents x 7
variants. Chosen on dev (unseen voices): ``examples/synth/results/wide-voices/README.md``.
"""
TRAIN_ACCENTS = ("en-us", "en-gb", "en-gb-scotland", "en-029")
TRAIN_VARIANTS = {
    "narrow": ("m1", "m2", "m3", "m4", "f1", "f2", "f3"),
    "wide": ("m1", "m2", "m3", "m4", "f1", "f2", "f3",
             "adam", "Alex", "Alicia", "Andrea", "Andy", "anika", "announcer", "antonio", "aunty", "belinda",
             "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed", "edward", "Gene", "grandma", "grandpa",
             "gustave", "Henrique", "Hugo", "iven", "Jacky", "john", "Lee", "Marco", "Mario", "max", "Michael",
             "michel", "Mike", "miguel", "norbert", "pablo", "pedro", "quincy", "rob", "sandro", "shelby",
             "travis", "victor"),
}
TRAIN_VOICE_SETS = {name: [f"{lang}+{var}" for lang in TRAIN_ACCENTS for var in variants]
                    for name, variants in TRAIN_VARIANTS.items()}
TRAIN_VOICES = TRAIN_VOICE_SETS["wide"]

TEST_VOICES = [f"{lang}+{var}" for lang in ("en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
               for var in ("m5", "m6", "m7", "f4", "f5")]
DEV_VOICES = [f"{lang}+{var}" for lang in ("en-gb-x-rp", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
              for var in ("m8", "robert", "paul", "Annie", "linda", "steph")]


def train_voices(spec) -> list:
    """``--train-voices`` values -> voices: one set name (``wide``, ``narrow``) or the voices themselves."""
    spec = list(spec)
    if len(spec) == 1 and spec[0] in TRAIN_VOICE_SETS:
        return list(TRAIN_VOICE_SETS[spec[0]])
    return spec
