"""Units every room shares: the audio rate the model hears and the motion frame rate it speaks."""

SAMPLE_RATE = 16000  # Hz: HuBERT's input rate; every source is resampled to it
FPS = 25  # motion frames per second (DiffPoseTalk's rate)
FRAME_SAMPLES = SAMPLE_RATE // FPS  # 640 audio samples per motion frame (40 ms)
