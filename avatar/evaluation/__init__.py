"""Evaluation: image metrics, held-out reconstruction (`avatar eval`), and lip-sync measures.

    metrics    PSNR, SSIM (Wang et al. 2004), masked means; training imports them for its loss and PSNR
    evaluate   `evaluate_run`: render the held-out frames of a run and compare (PSNR/SSIM/LMD)
    lipsync    `eval_audio`: render new audio and measure the audio-video offset (`avatar eval --audio`)

Renders through the inference engine (`avatar.engine`); imports nothing of training.
"""
