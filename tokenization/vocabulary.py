"""The fixed CrossMat vocabulary: specials, digits, decimal point, grouping symbols, 118 elements.

The layout is part of the model contract: ``modeling`` reads amounts back from the token ids
(digits are contiguous ids ``DIGIT_START..DIGIT_START+9``), so the order never changes.
"""

from __future__ import annotations

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DIGITS = [str(d) for d in range(10)]
DECIMAL = "."
GROUP_OPEN, GROUP_CLOSE = "(", ")"

# Elements by atomic number, H (Z=1) .. Og (Z=118).
ELEMENTS = (
    "H He Li Be B C N O F Ne Na Mg Al Si P S Cl Ar K Ca Sc Ti V Cr Mn Fe Co Ni Cu Zn Ga Ge As Se Br Kr "
    "Rb Sr Y Zr Nb Mo Tc Ru Rh Pd Ag Cd In Sn Sb Te I Xe Cs Ba La Ce Pr Nd Pm Sm Eu Gd Tb Dy Ho Er Tm "
    "Yb Lu Hf Ta W Re Os Ir Pt Au Hg Tl Pb Bi Po At Rn Fr Ra Ac Th Pa U Np Pu Am Cm Bk Cf Es Fm Md No "
    "Lr Rf Db Sg Bh Hs Mt Ds Rg Cn Nh Fl Mc Lv Ts Og"
).split()

VOCAB: list[str] = SPECIAL_TOKENS + DIGITS + [DECIMAL, GROUP_OPEN, GROUP_CLOSE] + ELEMENTS
TOKEN_TO_ID: dict[str, int] = {t: i for i, t in enumerate(VOCAB)}

PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
DIGIT_START = TOKEN_TO_ID["0"]
DECIMAL_ID = TOKEN_TO_ID[DECIMAL]
GROUP_OPEN_ID = TOKEN_TO_ID[GROUP_OPEN]
GROUP_CLOSE_ID = TOKEN_TO_ID[GROUP_CLOSE]
ELEMENT_START = TOKEN_TO_ID["H"]
NUM_ELEMENTS = len(ELEMENTS)

assert len(ELEMENTS) == 118 and len(set(VOCAB)) == len(VOCAB)


def token_layout() -> dict[str, int]:
    """Token-id layout to store in ``CrossMatConfig`` so the model can read amounts from ids."""
    return {
        "pad_token_id": PAD_ID,
        "unk_token_id": UNK_ID,
        "cls_token_id": CLS_ID,
        "sep_token_id": SEP_ID,
        "mask_token_id": MASK_ID,
        "digit_token_start": DIGIT_START,
        "decimal_token_id": DECIMAL_ID,
        "group_open_token_id": GROUP_OPEN_ID,
        "group_close_token_id": GROUP_CLOSE_ID,
        "element_token_start": ELEMENT_START,
        "num_elements": NUM_ELEMENTS,
        "vocab_size": len(VOCAB),
    }
