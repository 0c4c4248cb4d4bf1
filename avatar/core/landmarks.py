"""MediaPipe face-mesh landmark index sets and the one definition of mouth opening.

Every module that needs a landmark index (preprocessing masks, pose, blink; the model's motion
supervision; evaluation; the speak engine's silence handling) imports it from here.

Index sets come from MediaPipe's `mediapipe/python/solutions/face_mesh_connections.py`
(FACEMESH_LIPS, FACEMESH_FACE_OVAL, FACEMESH_LEFT_EYE / FACEMESH_RIGHT_EYE) for the 478-point mesh
with `refine_landmarks=True` (468 face points + 10 iris points).
"""

from __future__ import annotations

import numpy as np

NUM_LANDMARKS = 478

# Outer and inner lip contours (FACEMESH_LIPS).
LIPS_OUTER = (61, 146, 91, 181, 84, 17, 314, 405, 321, 375, 291, 409, 270, 269, 267, 0, 37, 39, 40, 185)
LIPS_INNER = (78, 95, 88, 178, 87, 14, 317, 402, 318, 324, 308, 415, 310, 311, 312, 13, 82, 81, 80, 191)
MOUTH_LANDMARKS = tuple(sorted(set(LIPS_OUTER) | set(LIPS_INNER)))  # the 40 points used by LMD
UPPER_INNER_LIP, LOWER_INNER_LIP = 13, 14
INNER_LIP_PAIR = (UPPER_INNER_LIP, LOWER_INNER_LIP)
# Lower inner lip: the mouth-interior branch (lower teeth, tongue) is supervised to move with it.
LOWER_INNER_LIPS = (14, 87, 178, 88, 317, 402, 318)

# Face oval loop (FACEMESH_FACE_OVAL) and its lower part between the jaw corners.
FACE_OVAL = (10, 338, 297, 332, 284, 251, 389, 356, 454, 323, 361, 288, 397, 365, 379, 378, 400, 377, 152,
             148, 176, 149, 150, 136, 172, 58, 132, 93, 234, 127, 162, 21, 54, 103, 67, 109)
JAW = (172, 136, 150, 149, 176, 148, 152, 377, 400, 378, 379, 365, 397)
JAW_RIGHT, JAW_LEFT = 172, 397  # subject's right (image left) / left jaw corners
FOREHEAD, CHIN, NOSE_BRIDGE = 10, 152, 168
CHEEK_LEFT, CHEEK_RIGHT = 234, 454
HEAD_WIDTH_PAIR = (CHEEK_LEFT, CHEEK_RIGHT)

# Eye loops (FACEMESH_RIGHT_EYE / FACEMESH_LEFT_EYE; "right" is the subject's right = image left).
RIGHT_EYE = (33, 7, 163, 144, 145, 153, 154, 155, 133, 173, 157, 158, 159, 160, 161, 246)
LEFT_EYE = (263, 249, 390, 373, 374, 380, 381, 382, 362, 398, 384, 385, 386, 387, 388, 466)
EYE_CORNERS = (33, 263)  # outer corners: the scale reference of mouth_opening
# Upper and lower lid of each eye.
EYELIDS = (159, 158, 160, 145, 153, 144, 386, 385, 387, 374, 380, 373)
# Eye aspect ratio points per eye: (corner, upper, upper, corner, lower, lower)
# (Soukupova & Cech 2016, "Real-Time Eye Blink Detection using Facial Landmarks").
EAR_POINTS = ((33, 160, 158, 133, 153, 144), (362, 385, 387, 263, 373, 380))
# Iris ring points across each iris (refined mesh only).
IRIS_PAIRS = ((469, 471), (474, 476))

# Landmarks whose tracked 2D motion supervises the face motion field (avatar/train/trainer.py).
MOTION_LANDMARKS = MOUTH_LANDMARKS + JAW + EYELIDS


def mouth_opening(landmarks: np.ndarray) -> np.ndarray:
    """[N] inner-lip gap (13-14) over the outer-eye-corner distance (33-263), from landmarks [N, 478, 2|3].

    The eye corners do not move with the jaw, so the ratio is scale invariant and a pure measure of the
    lip gap (a face-height reference would grow as the chin drops).
    """
    lm = np.asarray(landmarks, np.float32)
    gap = np.linalg.norm(lm[:, UPPER_INNER_LIP, :2] - lm[:, LOWER_INNER_LIP, :2], axis=-1)
    eyes = np.linalg.norm(lm[:, EYE_CORNERS[0], :2] - lm[:, EYE_CORNERS[1], :2], axis=-1)
    return (gap / np.maximum(eyes, 1e-6)).astype(np.float32)
