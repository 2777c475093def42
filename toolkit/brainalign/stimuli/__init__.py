"""Stimulus readers (video frames, audio, word transcripts) and per-TR windowing of an episode."""
from .audio import read_audio
from .episode import EpisodeStimuli
from .transcript import Word, read_transcript
from .video import sample_frames, video_info
from .windows import load_episode_stimuli

__all__ = ["EpisodeStimuli", "Word", "load_episode_stimuli", "read_audio", "read_transcript",
           "sample_frames", "video_info"]
