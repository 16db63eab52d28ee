"""Synthesizes the player's sounds into src/sounds/ (WAV, 22.05 kHz, 16-bit mono): our own,
made by this script from sine and square waves, so they are free to use (CC0).
Usage: python3 scripts/make-sounds.py (from frontend/)."""

import math
import struct
import wave
from pathlib import Path

RATE = 22050
OUT = Path(__file__).resolve().parent.parent / "src" / "sounds"


def tone(frequency: float, seconds: float, shape: str = "sine", volume: float = 0.5) -> list[float]:
    """A tone with a 3 ms attack and an exponential decay, so it clicks neither in nor out."""
    samples = []
    count = int(RATE * seconds)
    for n in range(count):
        phase = (frequency * n / RATE) % 1
        wave_value = (
            math.sin(2 * math.pi * phase) if shape == "sine" else (1 if phase < 0.5 else -1) * 0.6
        )
        attack = min(1, n / (0.003 * RATE))
        decay = math.exp(-5 * n / count)
        samples.append(volume * wave_value * attack * decay)
    return samples


def write(name: str, samples: list[float]) -> None:
    with wave.open(str(OUT / name), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(RATE)
        out.writeframes(b"".join(struct.pack("<h", int(s * 32767)) for s in samples))


OUT.mkdir(exist_ok=True)
write("blip.wav", tone(880, 0.035, "square", 0.25))  # a typed character: a short beep
write("soft.wav", tone(520, 0.05, "sine", 0.45))  # a gentler voice
write("next.wav", tone(660, 0.07, "sine", 0.4) + tone(990, 0.12, "sine", 0.4))  # a page or line
