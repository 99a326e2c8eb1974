"""espeak-ng through its C API (ctypes): speech, word timings from its events, and g2p.

Word timings come from espeak-ng's own events, not from an estimate. Each word of the
input is preceded by an SSML `<mark>`; espeak-ng reports every mark and every phoneme
with its sample position. A word starts at its first non-pause phoneme after its mark
and ends at the pause that follows its last phoneme (or where the next word starts).

Two espeak-ng behaviours shape this (measured on TinyStories, docs/LOG.md):
- its WORD events cover word *groups*: unstressed words ("was", "the", "a") are merged
  into a neighbour and get no event of their own, so WORD events cannot time every word;
- a mark right after a sentence end inside one call is dropped, so text is spoken one
  sentence per call (each call starts a fresh intonation unit anyway) and the audio of
  the sentences concatenated. With both, all 46,580 words of 300 stories got a mark.

espeak-ng also carries its waveform generator's state from one utterance to the next (a
flutter phase kept in a function's static variable, among others; srand does not reset
it): the same sentence spoken after another came out a few hundred samples longer, with
other samples; many espeak_TextToPhonemes calls changed the events of later synthesis. So
`speak` has each call synthesised in a fork of a keeper process, a small interpreter that
has initialised espeak-ng and never used it: a text's audio and timings depend on the text
and the voice settings alone, not on what the process did before nor on which worker spoke
it. This process's own engine stays free for `Espeak.phonemes` and the timings.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import html
import multiprocessing
import os
import pickle
import re
import subprocess
import sys
import threading
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from simslm.speech import text as text_lib

# espeak_EVENT_TYPE (speak_lib.h)
_EVENT_LIST_TERMINATED, _EVENT_MARK, _EVENT_PHONEME = 0, 3, 7
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_PHONEME_EVENTS = 0x0001
_CHARS_UTF8 = 1
_SSML = 0x10
_PHONEMES = 0x100  # espeakPHONEMES: phoneme mnemonics inside [[ ]] are read as phonemes (espeak-ng's CLI sets it)
_STRESS_MARKS = "'%,=`"
_POS_CHARACTER = 1
# espeak_PARAMETER
_RATE, _PITCH, _RANGE = 1, 3, 4


class EspeakError(RuntimeError):
    """espeak-ng is missing or refused a request."""


class UnalignedWordsError(ValueError):
    """espeak-ng reported no mark or no phoneme for some word of the text."""


class _EventId(ctypes.Union):
    _fields_ = [("number", ctypes.c_int), ("name", ctypes.c_char_p), ("string", ctypes.c_char * 8)]


class _Event(ctypes.Structure):
    _fields_ = [("type", ctypes.c_int), ("unique_identifier", ctypes.c_uint), ("text_position", ctypes.c_int),
                ("length", ctypes.c_int), ("audio_position", ctypes.c_int), ("sample", ctypes.c_int),
                ("user_data", ctypes.c_void_p), ("id", _EventId)]


_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.POINTER(_Event))


@dataclass(frozen=True)
class Event:
    """A MARK (`mark` = its name) or PHONEME (`phoneme` = its mnemonic) event at an audio sample."""

    kind: str
    sample: int
    mark: str = ""
    phoneme: str = ""

    @property
    def is_pause(self) -> bool:
        """espeak-ng names its pause phonemes with a leading underscore ('_', '_:', '_!')."""
        return self.phoneme.startswith("_")


@dataclass(frozen=True)
class Speech:
    """Synthesised audio (int16 at `sample_rate`) with the events espeak-ng reported."""

    samples: np.ndarray
    sample_rate: int
    events: tuple[Event, ...]


class Espeak:
    """The espeak-ng engine of this process (the C library keeps one global state)."""

    _instance: "Espeak | None" = None

    def __init__(self) -> None:
        name = ctypes.util.find_library("espeak-ng") or "libespeak-ng.so.1"
        try:
            self._lib = ctypes.CDLL(name)
        except OSError:
            raise EspeakError("libespeak-ng is not installed; install espeak-ng "
                              "(Debian/Ubuntu: apt-get install espeak-ng) or run scripts/setup.sh") from None
        self._lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self._lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        self.sample_rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, None, _INITIALIZE_PHONEME_EVENTS)
        if self.sample_rate <= 0:
            raise EspeakError("espeak_Initialize failed (espeak-ng-data missing?)")
        self._chunks: list[np.ndarray] = []
        self._events: list[Event] = []
        self._callback = _SynthCallback(self._collect)  # kept alive: the library holds the pointer
        self._lib.espeak_SetSynthCallback(self._callback)
        self._voice: bytes | None = None

    @classmethod
    def instance(cls) -> "Espeak":
        """The process-wide engine, initialised on first use."""
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def _collect(self, wav, num_samples, events) -> int:
        if num_samples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(num_samples,)).copy())
        index = 0
        while events[index].type != _EVENT_LIST_TERMINATED:
            event = events[index]
            if event.type == _EVENT_MARK:
                self._events.append(Event("mark", event.sample, mark=event.id.name.decode()))
            elif event.type == _EVENT_PHONEME:
                self._events.append(Event("phoneme", event.sample,
                                          phoneme=event.id.string.decode("ascii", "replace")))
            index += 1
        return 0

    def set_voice(self, voice: str) -> None:
        """Select a voice by name, e.g. 'en-us' or 'en-gb-x-rp+f2' (language + variant)."""
        encoded = voice.encode()
        if encoded != self._voice:
            if self._lib.espeak_SetVoiceByName(encoded) != 0:
                raise EspeakError(f"espeak-ng has no voice '{voice}' (see `espeak-ng --voices`)")
            self._voice = encoded

    def synthesize(self, text: str, *, voice: str = "en-us", rate_wpm: int = 175,
                   pitch: int = 50, pitch_range: int = 50, ssml: bool = False, phoneme_input: bool = False) -> Speech:
        """Speak `text` (plain or SSML; with `phoneme_input`, mnemonics inside [[ ]] as phonemes); rate in words per
        minute, pitch and range on a 0-100 scale."""
        self.set_voice(voice)
        for parameter, value in ((_RATE, rate_wpm), (_PITCH, pitch), (_RANGE, pitch_range)):
            self._lib.espeak_SetParameter(parameter, int(value), 0)
        self._chunks, self._events = [], []
        buffer = text.encode("utf-8") + b"\0"
        flags = _CHARS_UTF8 | (_SSML if ssml else 0) | (_PHONEMES if phoneme_input else 0)
        status = self._lib.espeak_Synth(buffer, len(buffer), 0, _POS_CHARACTER, 0, flags, None, None)
        if status != 0 or self._lib.espeak_Synchronize() != 0:
            raise EspeakError(f"espeak_Synth failed with status {status}")
        samples = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        return Speech(samples, self.sample_rate, tuple(self._events))

    @functools.lru_cache(maxsize=65536)
    def phonemes(self, text: str, voice: str = "en-us") -> tuple[str, ...]:
        """espeak-ng's phoneme mnemonics for `text`, stress marks removed."""
        self.set_voice(voice)
        buffer = ctypes.create_string_buffer(text.encode("utf-8"))
        pointer = ctypes.c_void_p(ctypes.addressof(buffer))
        # phonememode: bits 8-23 hold a separator character put between phonemes.
        mode = ord("|") << 8
        pieces = []
        while pointer.value:
            result = self._lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, mode)
            if result:
                pieces.append(result.decode("utf-8", "replace"))
        names = (p.strip(_STRESS_MARKS) for piece in pieces for p in piece.replace(" ", "|").split("|"))
        return tuple(name for name in names if name and not name.startswith("_"))


_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+")


def sentences(text: str) -> list[str]:
    """Split text after sentence-final punctuation (at whitespace, so no word is cut)."""
    return [piece for piece in _SENTENCE_END.split(text) if piece.strip()]


def marked_ssml(sentence: str) -> str:
    """SSML for `sentence` with `<mark name="i"/>` in front of its i-th word."""
    parts, last = ["<speak>"], 0
    for index, (word, start, end) in enumerate(text_lib.words_with_spans(sentence)):
        parts.append(html.escape(sentence[last:start], quote=False))
        parts.append(f'<mark name="{index}"/>{html.escape(word, quote=False)}')
        last = end
    parts.append(html.escape(sentence[last:], quote=False) + "</speak>")
    return "".join(parts)


def speak(text: str, *, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50,
          pitch_range: int = 50) -> tuple[np.ndarray, int, list[tuple[str, float, float]]]:
    """Speak `text` sentence by sentence: (int16 samples, sample rate, [(word, start_sec, end_sec)]).

    The timed words are exactly `simslm.text.words(text)`; raises `UnalignedWordsError`
    when espeak-ng gives no event for some word, and ValueError when `text` has no word.
    The audio comes from a fork of an untouched engine (`keeper`), so the same arguments give
    the same audio in any process (module docstring). Where no fork can be made (Windows), it is
    synthesised here, after whatever this process's engine did before.
    """
    spoken = [sentence for sentence in sentences(text) if text_lib.has_words(sentence)]
    if not spoken:
        raise ValueError("text has no words to speak")
    settings = {"voice": voice, "rate_wpm": rate_wpm, "pitch": pitch, "pitch_range": pitch_range, "ssml": True}
    marked = [marked_ssml(sentence) for sentence in spoken]
    engine = Espeak.instance()
    untouched = keeper()
    # Every sentence is synthesised before any is timed: timing calls espeak_TextToPhonemes, which
    # changes what later synthesis reports. It runs here, on this process's engine and phoneme cache.
    speeches = (untouched.call(_synthesize_each, marked, settings) if untouched
                else _synthesize_each(marked, settings))
    timings, offset_samples = [], 0
    for sentence, speech in zip(spoken, speeches, strict=True):
        offset_sec = offset_samples / speech.sample_rate
        timings += [(word, start + offset_sec, end + offset_sec)
                    for word, start, end in word_timings(sentence, speech, engine, voice)]
        offset_samples += len(speech.samples)
    return np.concatenate([speech.samples for speech in speeches]), engine.sample_rate, timings


def speak_phonemes(mnemonics: str, *, voice: str = "en-us", rate_wpm: int = 175, pitch: int = 50,
                   pitch_range: int = 50) -> tuple[np.ndarray, int]:
    """Speak espeak-ng phoneme mnemonics (`h@l'oU`: its own phoneme names, `'` before a stressed vowel), not text:
    (int16 samples, sample rate), from a fork of an untouched engine as `speak`'s audio is."""
    if not mnemonics.strip() or "]]" in mnemonics:
        raise ValueError(f"not phoneme mnemonics: {mnemonics!r}")
    settings = {"voice": voice, "rate_wpm": rate_wpm, "pitch": pitch, "pitch_range": pitch_range,
                "phoneme_input": True}
    untouched = keeper()
    texts = [f"[[{mnemonics}]]"]
    (speech,) = untouched.call(_synthesize_each, texts, settings) if untouched else _synthesize_each(texts, settings)
    return speech.samples, speech.sample_rate


def _synthesize_each(texts: list[str], settings: dict) -> list[Speech]:
    engine = Espeak.instance()
    return [engine.synthesize(text, **settings) for text in texts]


_KEEPERS: dict[int, "_Keeper"] = {}  # by process id: a fork of this process starts its own
_KEEPERS_LOCK = threading.Lock()


def keeper() -> "_Keeper | None":
    """This process's keeper of an untouched espeak-ng, started on first use; None without fork (Windows)."""
    if not hasattr(os, "fork"):
        return None
    with _KEEPERS_LOCK:
        found = _KEEPERS.get(os.getpid())
        if found is None or found.process.poll() is not None:
            found = _KEEPERS[os.getpid()] = _Keeper()
        return found


class _Keeper:
    """A small interpreter (`_keep`) that initialises espeak-ng, never uses it, and runs each call in a fork.

    A new interpreter rather than a fork of this one: it holds none of this process's memory (a
    fork would pin whatever this process later frees) and forks fast however large this process
    is (a fork of a process with torch loaded took 23 ms, of a bare one 5 ms). Requests and
    replies are pickled through pipes between this process and its own children, never read from
    a file. Each call runs in a new fork and exits after it, so nothing it changes in espeak-ng
    (or in libc's rand, reseeded to its default) reaches the next call. A call that dies without a
    result (a crash inside the C library) is an EspeakError, not a lost worker. The keeper leaves
    when this process closes the pipes, at its exit at the latest.
    """

    def __init__(self) -> None:
        request_read, request_write = multiprocessing.Pipe(duplex=False)
        reply_read, reply_write = multiprocessing.Pipe(duplex=False)
        descriptors = (request_read.fileno(), reply_write.fileno())
        # The simslm this process imported: installed, its folder is on the new interpreter's path already;
        # a source tree (PYTHONPATH aside) goes in front, as it did here.
        code = (f"import sys; root = {_SOURCE_ROOT!r}; sys.path[:0] = [] if root in sys.path else [root]; "
                f"from simslm.speech.espeak import _keep; _keep({descriptors[0]}, {descriptors[1]})")
        self.process = subprocess.Popen([sys.executable, "-c", code], pass_fds=descriptors,
                                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        request_read.close()
        reply_write.close()
        self._requests, self._replies = request_write, reply_read
        self._lock = threading.Lock()

    def call(self, function, *args):
        """`function(*args)` run in a fork of the keeper, whose `Espeak.instance()` is untouched: its value, or its
        exception raised here. `function` must be importable by name in a new interpreter."""
        with self._lock:
            try:
                self._requests.send_bytes(pickle.dumps((function, args), protocol=pickle.HIGHEST_PROTOCOL))
                succeeded, value = pickle.loads(self._replies.recv_bytes())
            except (EOFError, OSError):
                raise EspeakError(f"espeak-ng's keeper process has ended (status {self.process.poll()})") from None
        if succeeded:
            return value
        raise value


_SOURCE_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding this `simslm` package


def _keep(request_fd: int, reply_fd: int) -> None:
    """The keeper's main loop: a fork per request, the fork's outcome relayed as the reply."""
    import signal
    from multiprocessing.connection import Connection

    # Ctrl-C reaches the whole process group: the caller stops, closes the pipes, and the keeper leaves then.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Initialised here, before any fork, and never used by the keeper itself. Not even to select a voice: that
    # would save each fork 8 ms of dictionary loading, but changed the audio of 14 of the demo's 800 stories
    # (four voice variants; docs/LOG.md).
    Espeak.instance()
    requests, replies = Connection(request_fd, writable=False), Connection(reply_fd, readable=False)
    while True:
        try:
            request = requests.recv_bytes()
        except EOFError:
            return
        result_read, result_write = multiprocessing.Pipe(duplex=False)
        with warnings.catch_warnings():
            # espeak-ng's idle queue thread makes Python 3.12+ warn about fork in a threaded process; the fork
            # never touches that queue (synchronous mode) and leaves with os._exit.
            warnings.simplefilter("ignore", DeprecationWarning)
            pid = os.fork()
        if pid == 0:  # run the call, send its outcome, leave without the keeper's exit handlers
            try:
                result_read.close()
                ctypes.CDLL(None).srand(1)
                try:
                    function, args = pickle.loads(request)
                    outcome = pickle.dumps((True, function(*args)), protocol=pickle.HIGHEST_PROTOCOL)
                except Exception as error:
                    try:
                        outcome = pickle.dumps((False, error))
                    except Exception:  # an exception that cannot be pickled still comes back, as text
                        outcome = pickle.dumps((False, EspeakError(f"{type(error).__name__}: {error}")))
                result_write.send_bytes(outcome)
            finally:
                os._exit(0)
        result_write.close()
        try:
            outcome = result_read.recv_bytes()
        except EOFError:  # the call died before sending anything
            outcome = None
        result_read.close()
        _, wait_status = os.waitpid(pid, 0)
        if outcome is None:
            signal_number = os.WTERMSIG(wait_status) if os.WIFSIGNALED(wait_status) else 0
            how = f"signal {signal_number}" if signal_number else f"status {os.waitstatus_to_exitcode(wait_status)}"
            outcome = pickle.dumps((False, EspeakError(f"espeak-ng's process ended without a result ({how})")))
        try:
            replies.send_bytes(outcome)
        except OSError:  # the caller has gone (stopped mid-call): nobody is left to answer
            return


def word_timings(sentence: str, speech: Speech, engine: Espeak | None = None,
                 voice: str = "en-us") -> list[tuple[str, float, float]]:
    """(word, start_sec, end_sec) for every word of `sentence`, from the events of `marked_ssml`.

    espeak-ng speaks an unstressed word merged with the word before it ("there was",
    "in the"): both words' phonemes follow the first mark and the second mark arrives
    after them, or never. Such a group's phoneme events are split between its words by
    the phonemes espeak-ng gives each word on its own (`Espeak.phonemes`), aligned to the
    spoken ones (`split_counts`); a group that cannot be split raises `UnalignedWordsError`.
    """
    tokens = text_lib.words_with_spans(sentence)
    mark_order: list[int | None] = [None] * len(tokens)
    for order, event in enumerate(speech.events):
        if event.kind == "mark" and event.mark.isdigit() and int(event.mark) < len(tokens):
            if mark_order[int(event.mark)] is None:
                mark_order[int(event.mark)] = order
    if mark_order[0] is None:
        raise UnalignedWordsError(f"espeak-ng reported no mark for the first word {tokens[0][0]!r}")
    # The phoneme events after each word's mark, up to the next mark. A word whose mark
    # never came (an accent that drops its /h/ merges "is here" into one word) has none;
    # the first word's segment starts with the call (such a voice can speak "Hello"
    # before its mark).
    mark_positions = sorted(order for order in mark_order if order is not None) + [len(speech.events)]
    segments = []
    for index, order in enumerate(mark_order):
        if order is None:
            segments.append([])
            continue
        following = next(p for p in mark_positions if p > order)
        begin = 0 if index == 0 else order + 1
        segments.append([e for e in speech.events[begin:following] if e.kind == "phoneme"])
    # Each word's spoken phonemes, with merged groups split; plus the pause that ends it.
    spoken: list[list[Event]] = [[] for _ in tokens]
    pause_after: list[int | None] = [None] * len(tokens)
    index = 0
    while index < len(tokens):
        group_end = index + 1
        while group_end < len(tokens) and not any(not e.is_pause for e in segments[group_end]):
            group_end += 1
        phonemes = [e for e in segments[index] if not e.is_pause]
        last_spoken = max((i for i, e in enumerate(segments[index]) if not e.is_pause), default=-1)
        pause_after[group_end - 1] = next((e.sample for e in segments[index][last_spoken + 1:] if e.is_pause), None)
        if group_end - index == 1:
            spoken[index] = phonemes
        else:
            engine = engine or Espeak.instance()
            expected = [engine.phonemes(tokens[k][0], voice) for k in range(index, group_end)]
            counts = split_counts([e.phoneme for e in phonemes], expected)
            if counts is None:
                group = " ".join(tokens[k][0] for k in range(index, group_end))
                raise UnalignedWordsError(f"cannot split espeak-ng's merged word group {group!r} "
                                          f"into its words")
            for k, count in zip(range(index, group_end), counts):
                spoken[k], phonemes = phonemes[:count], phonemes[count:]
        index = group_end
    for word_index, phonemes in enumerate(spoken):
        if not phonemes:
            raise UnalignedWordsError(f"espeak-ng spoke no phoneme for {tokens[word_index][0]!r}")
    starts = [phonemes[0].sample for phonemes in spoken]
    num_samples = len(speech.samples)
    timings = []
    for index, (word, _, _) in enumerate(tokens):
        following = starts[index + 1] if index + 1 < len(tokens) else num_samples
        end = min(pause_after[index] if pause_after[index] is not None else following, following, num_samples)
        timings.append((word, starts[index] / speech.sample_rate, end / speech.sample_rate))
    return timings


def split_counts(spoken: list[str], expected: list[tuple[str, ...]]) -> list[int] | None:
    """How many of the `spoken` phonemes belong to each word, given each word's own phonemes.

    Connected speech changes a merged group slightly ("for a" gains a linking r, "have"
    loses its h), so the spoken sequence is aligned to the concatenated expected one by
    edit distance; a spoken phoneme belongs to the word of the phoneme it is aligned to
    (an inserted one to the word before it). None when some word would get no phoneme.
    """
    labels = [word for word, names in enumerate(expected) for _ in names]
    flat = [name for names in expected for name in names]
    rows, cols = len(spoken) + 1, len(flat) + 1
    cost = np.zeros((rows, cols), dtype=np.int32)
    cost[:, 0], cost[0, :] = np.arange(rows), np.arange(cols)
    for i in range(1, rows):
        for j in range(1, cols):
            cost[i, j] = min(cost[i - 1, j - 1] + (spoken[i - 1] != flat[j - 1]), cost[i - 1, j] + 1, cost[i, j - 1] + 1)
    owner = [0] * len(spoken)
    i, j = rows - 1, cols - 1
    while i > 0:
        if j > 0 and cost[i, j] == cost[i - 1, j - 1] + (spoken[i - 1] != flat[j - 1]):
            owner[i - 1] = labels[j - 1]
            i, j = i - 1, j - 1
        elif j > 0 and cost[i, j] == cost[i, j - 1] + 1:
            j -= 1
        else:  # spoken phoneme with no counterpart: it belongs with the expected one before it
            owner[i - 1] = labels[j - 1] if j > 0 else 0
            i -= 1
    counts = [0] * len(expected)
    for word in owner:
        counts[word] += 1
    # Owners are monotone along an alignment path, so counts describe contiguous runs.
    return counts if all(counts) else None
