"""Whole-heart label convention, shared by the phantoms and the MM-WHS converter.

MM-WHS 2017 stores 205 (myocardium), 420 (LA), 500 (LV), 550 (RA), 600 (RV), 820 (ascending aorta), 850 (pulmonary
artery); we map them, in that order, to 1..7.
"""

WHOLE_HEART_LABELS: dict[str, int] = {"background": 0, "MYO": 1, "LA": 2, "LV": 3, "RA": 4, "RV": 5, "AO": 6, "PA": 7}
MMWHS_TO_LABEL: dict[int, int] = {205: 1, 420: 2, 500: 3, 550: 4, 600: 5, 820: 6, 850: 7}
