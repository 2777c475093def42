"""Tiny trees in the exact published layouts of CNeuroMod Friends and Algonauts 2025, written here with
h5py / nibabel / PyAV / csv directly (not with brainalign's writers), for the real-data tests and the
configs/friends.yaml CI check.

Published names (read in courtois-neuromod/algonauts_2025.competitors, friends.fmriprep, friends.stimuli,
friends_annotations):

Algonauts 2025 (``algonauts_2025.competitors``)::

    fmri/sub-0X/func/sub-0X_task-friends_space-MNI152NLin2009cAsym_atlas-Schaefer18_parcel-1000Par7Net_desc-s123456_bold.h5
        root datasets ses-NNN_task-s01e01a, (TRs, parcels)
    fmri/sub-0X/func/sub-0X_task-movie10_space-MNI152NLin2009cAsym_atlas-Schaefer18_parcel-1000Par7Net_bold.h5
        root datasets ses-NNN_task-figures01_run-1
    fmri/sub-0X/atlas/sub-0X_space-MNI152NLin2009cAsym_atlas-Schaefer18_parcel-1000Par7Net_desc-dseg_parcellation.nii.gz
    stimuli/movies/friends/s1/friends_s01e01a.mkv               h264 + mp3
    stimuli/movies/movie10/figures/figures01.mkv
    stimuli/transcripts/friends/s1/friends_s01e01a.tsv          text_per_tr, words_per_tr, onsets_per_tr,
    stimuli/transcripts/movie10/figures/movie10_figures01.tsv   durations_per_tr; a word in its offset's chunk

CNeuroMod (``friends.fmriprep``, ``friends.stimuli``, ``friends_annotations``)::

    friends.fmriprep/sub-01/ses-003/func/sub-01_ses-003_task-s01e01a_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz
        … _space-MNI152NLin2009cAsym_desc-brain_mask.nii.gz, …_desc-confounds_timeseries.tsv,
        … _space-fsLR_den-91k_bold.dtseries.nii
    friends.stimuli/s1/friends_s01e01a.mkv
    friends_annotations/annotation_results/Speech2Text/s1/friends_s01e01a_model-AA_desc-wUtter_transcript.json
"""
from __future__ import annotations

import csv
import json
from fractions import Fraction
from pathlib import Path

import h5py
import nibabel as nib
import numpy as np

TR = 1.49
SPACE = "MNI152NLin2009cAsym"
ALG_TAIL = "space-MNI152NLin2009cAsym_atlas-Schaefer18_parcel-1000Par7Net"
NETWORKS = ("Vis", "SomMot", "DorsAttn", "SalVentAttn", "Limbic", "Cont", "Default")
AFFINE = np.array([[-4.0, 0, 0, 20], [0, 4.0, 0, -24], [0, 0, 4.0, -16], [0, 0, 0, 1]])


# ---- stimuli ---------------------------------------------------------------------------------------

def write_movie(path, n_trs, fps=4, size=32, rate=22050, seed=0, audio=True):
    """An .mkv with an h264 video track and (``audio``) an mp3 stereo track, n_trs * TR + 0.3 s long:
    frames of changing colour, a tone whose pitch changes every few seconds."""
    import av

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    seconds = n_trs * TR + 0.3
    n_frames = int(np.ceil(seconds * fps))
    with av.open(str(path), "w", format="matroska") as c:
        vs = c.add_stream("libx264", rate=fps)
        vs.width = vs.height = size
        vs.pix_fmt = "yuv420p"
        if audio:
            aus = c.add_stream("libmp3lame", rate=rate)
            aus.layout = "stereo"
        colours = rng.integers(0, 256, size=(n_frames // fps + 2, 3))
        for i in range(n_frames):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = colours[i // fps]
            img[: size // 4] = (i * 7) % 256
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = i
            c.mux(vs.encode(frame))
        c.mux(vs.encode())
        if audio:
            t = np.arange(int(seconds * rate)) / rate
            freq = 200 + 100 * rng.integers(0, 5, size=int(seconds // 3) + 2)[(t // 3).astype(int)]
            wave = (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
            frame_size = aus.codec_context.frame_size or 1152
            for k in range(0, len(wave), frame_size):
                chunk = np.stack([wave[k:k + frame_size]] * 2)
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format="fltp", layout="stereo")
                f.sample_rate = rate
                f.pts = k
                f.time_base = Fraction(1, rate)
                c.mux(aus.encode(f))
            c.mux(aus.encode())
    return path


def make_words(n_trs, seed=0, straddle=True):
    """[(word, onset, duration)] ~1.3 words/s over n_trs TRs; with ``straddle`` the first word spans the
    boundary between chunk 1 and chunk 2 (onset 2.8 s, offset 3.1 s; chunk 2 starts at 2.98 s)."""
    rng = np.random.default_rng(seed)
    vocab = ["hey", "ross", "how", "you", "doing", "coffee", "monica", "pivot", "we", "were", "on", "a", "break"]
    words, t = [], 0.4
    if straddle:
        words.append(("straddle", 2.8, 0.3))
        t = 3.3
    while t < n_trs * TR - 1.0:
        dur = float(rng.uniform(0.15, 0.5))
        words.append((str(rng.choice(vocab)), round(t, 3), round(dur, 3)))
        t += dur + float(rng.uniform(0.1, 1.2))
    return words


def write_algonauts_transcript(path, words, n_trs):
    """The Algonauts 2025 per-TR transcript: one row per 1.49 s chunk; a word goes to the chunk holding its
    offset (onset + duration), as the competition README states; empty chunks have empty cells."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [[] for _ in range(n_trs)]
    for w, o, d in words:
        rows[min(int((o + d) // TR), n_trs - 1)].append((w, o, d))
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, delimiter="\t", lineterminator="\n")
        out.writerow(["text_per_tr", "words_per_tr", "onsets_per_tr", "durations_per_tr"])
        for row in rows:
            if not row:
                out.writerow(["", "", "", ""])
                continue
            out.writerow([" ".join(w for w, _, _ in row).capitalize() + ".", repr([w for w, _, _ in row]),
                          repr([o for _, o, _ in row]), repr([d for _, _, d in row])])
    return path


def write_speech2text(path, words):
    """friends_annotations' AssemblyAI transcript: {"transcript", "words": [{word, start, end, speaker,
    confidence}], "sentences"}."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ws = [{"word": w, "start": o, "end": round(o + d, 3), "speaker": None, "confidence": 0.9} for w, o, d in words]
    path.write_text(json.dumps({"transcript": " ".join(w for w, _, _ in words), "words": ws,
                                "sentences": [{"text": " ".join(w["word"] for w in ws), "start": ws[0]["start"],
                                               "end": ws[-1]["end"], "speaker": None, "confidence": 0.9,
                                               "words": ws}]}))
    return path


# ---- atlases ---------------------------------------------------------------------------------------

# one parcel name per network sub-region as they appear in Schaefer2018_1000Parcels_7Networks_order.txt
# (CBIG v0.14.3); the hemispheres differ (e.g. LH Default_PFC, RH Default_PFCv / PFCm)
SUBREGIONS = {
    "LH": ("Vis", "SomMot", "DorsAttn_Post", "DorsAttn_FEF", "SalVentAttn_ParOper", "SalVentAttn_FrOper",
           "SalVentAttn_Med", "Limbic_OFC", "Limbic_TempPole", "Cont_Par", "Cont_PFCl", "Cont_pCun",
           "Default_Par", "Default_Temp", "Default_PFC", "Default_PCC"),
    "RH": ("Vis", "SomMot", "DorsAttn_Post", "DorsAttn_FEF", "SalVentAttn_TempOccPar", "SalVentAttn_FrOper",
           "SalVentAttn_Med", "Limbic_OFC", "Limbic_TempPole", "Cont_Par", "Cont_PFCl", "Cont_pCun",
           "Default_Par", "Default_Temp", "Default_PFCv", "Default_PCC")}


def schaefer_names(per_network=2, subregions=False):
    """Schaefer-style label names in the LUT's order (left hemisphere's networks, then the right's); with
    ``subregions`` one parcel per sub-region name of the 1000-parcel release (32 labels)."""
    if subregions:
        return [f"7Networks_{h}_{sr}_1" for h in ("LH", "RH") for sr in SUBREGIONS[h]]
    return [f"7Networks_{h}_{net}_{k}" for h in ("LH", "RH") for net in NETWORKS for k in range(1, per_network + 1)]


def write_schaefer_lut(path, names):
    """``Schaefer2018_*Parcels_7Networks_order.txt``: ``index<TAB>name<TAB>R<TAB>G<TAB>B<TAB>0``, no header."""
    Path(path).write_text("".join(f"{i}\t{n}\t{(7 * i) % 256}\t{(13 * i) % 256}\t{(29 * i) % 256}\t0\n"
                                  for i, n in enumerate(names, start=1)))
    return Path(path)


def parcellation(shape, n_parcels, seed=0):
    """int16 volume: labels 1..n_parcels on an ellipsoid brain (each a contiguous run of voxels), 0 outside."""
    idx = np.indices(shape).reshape(3, -1).T.astype(float)
    c = (np.asarray(shape) - 1) / 2
    inside = (((idx - c) / (np.asarray(shape) / 2)) ** 2).sum(1) <= 1.0
    lab = np.zeros(int(np.prod(shape)), np.int16)
    pos = np.flatnonzero(inside)
    for k, part in enumerate(np.array_split(pos, n_parcels)):
        lab[part] = k + 1
    return lab.reshape(shape)


def save_nifti(path, data, affine=AFFINE, tr=None, dtype=None):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(np.asarray(data, dtype=dtype or data.dtype), affine)
    img.header.set_xyzt_units("mm", "sec")
    if tr is not None:
        img.header.set_zooms(img.header.get_zooms()[:3] + (tr,))
    nib.save(img, str(path))
    return path


# ---- Algonauts 2025 ------------------------------------------------------------------------------

def algonauts_tree(root, subjects=("01", "02", "03"), runs=("s01e01a", "s01e01b", "s01e02a", "s02e01a"),
                   n_trs=30, n_parcels=28, missing=(("02", "s01e02a"),), movie10=(), grid=(8, 9, 8), seed=0,
                   names=None):
    """Write a tiny Algonauts 2025 tree under ``root``; returns {(subject, run): parcel data (TRs, P)}.

    ``movie10``: runs such as ``figures01_run-1`` (stimulus figures01, shown twice: run-1 and run-2) in the
    separate task-movie10 files. Sessions are numbered in run order from 3 (as in the release)."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    atlas = parcellation(grid, n_parcels)
    data = {}
    for s in subjects:
        save_nifti(root / f"fmri/sub-{s}/atlas/sub-{s}_{ALG_TAIL}_desc-dseg_parcellation.nii.gz", atlas)
        for kind, kind_runs in (("friends", runs), ("movie10", movie10)):
            if not kind_runs:
                continue
            desc = "_desc-s123456" if kind == "friends" else ""
            path = root / f"fmri/sub-{s}/func/sub-{s}_task-{kind}_{ALG_TAIL}{desc}_bold.h5"
            path.parent.mkdir(parents=True, exist_ok=True)
            with h5py.File(path, "w") as f:
                for i, run in enumerate(kind_runs):
                    if (s, run) in missing:
                        continue
                    y = rng.standard_normal((n_trs, n_parcels)).astype(np.float32) + rng.uniform(-1, 1, n_parcels)
                    f.create_dataset(f"ses-{i + 3:03d}_task-{run}", data=y)
                    data[(s, run)] = y
    for i, run in enumerate(runs):
        season = int(run[1:3])
        write_movie(root / f"stimuli/movies/friends/s{season}/friends_{run}.mkv", n_trs, seed=seed + i)
        write_algonauts_transcript(root / f"stimuli/transcripts/friends/s{season}/friends_{run}.tsv",
                                   make_words(n_trs, seed + i), n_trs)
    for i, run in enumerate(dict.fromkeys(r.split("_run-")[0] for r in movie10)):
        movie = run.rstrip("0123456789")
        write_movie(root / f"stimuli/movies/movie10/{movie}/{run}.mkv", n_trs, seed=seed + 50 + i)
        write_algonauts_transcript(root / f"stimuli/transcripts/movie10/{movie}/movie10_{run}.tsv",
                                   make_words(n_trs, seed + 50 + i), n_trs)
    names = names if names is not None else schaefer_names(n_parcels // 14)
    write_schaefer_lut(root / f"Schaefer2018_{n_parcels}Parcels_7Networks_order.txt", names)
    return data


def algonauts_config(root, out, **over):
    """A brainalign config for the Algonauts tree, written as a user would from the README."""
    b = {"format": "hdf5",
         "dir": ("{root}/fmri/sub-{subject}/func/sub-{subject}_task-friends_space-MNI152NLin2009cAsym_atlas-"
                 "Schaefer18_parcel-1000Par7Net_desc-s123456_bold.h5"),
         "subjects": ["01", "02", "03"], "tr": TR,
         "rois": ("{root}/fmri/sub-{subject}/atlas/sub-{subject}_space-MNI152NLin2009cAsym_atlas-Schaefer18_"
                  "parcel-1000Par7Net_desc-dseg_parcellation.nii.gz"),
         "roi_names": "{root}/Schaefer2018_28Parcels_7Networks_order.txt", "roi_groups": "networks"}
    cfg = {"name": "algonauts", "output": str(out), "data": {
        "root": str(root), "episodes": ["s01e01a", "s01e01b", "s01e02a", "s02e01a"],
        "stimuli": {"video": "{root}/stimuli/movies/friends/s{season}/friends_{episode}.mkv",
                    "transcript": "{root}/stimuli/transcripts/friends/s{season}/friends_{episode}.tsv"},
        "bold": b}, **SMALL_MODEL}
    return _merge(cfg, over)


# ---- CNeuroMod fMRIPrep --------------------------------------------------------------------------

CONFOUND_COLUMNS = ("global_signal", "csf", "white_matter", "trans_x", "trans_y", "trans_z", "rot_x", "rot_y",
                    "rot_z", "framewise_displacement", "cosine00", "cosine01")


def write_confounds(path, n_trs, rng):
    with open(path, "w", newline="") as fh:
        out = csv.writer(fh, delimiter="\t", lineterminator="\n")
        out.writerow(CONFOUND_COLUMNS)
        t = np.arange(n_trs)
        for i in range(n_trs):
            row = list(rng.normal(size=len(CONFOUND_COLUMNS) - 3).round(5))
            row += ["n/a" if i == 0 else round(abs(float(rng.normal())) * 0.1, 5)]
            row += [round(float(np.cos(np.pi * (t[i] + 0.5) * k / n_trs)), 5) for k in (1, 2)]
            out.writerow(row)


def fmriprep_tree(root, subjects=("01", "02"), runs=("s01e01a", "s01e01b", "s01e02a"), n_trs=40, grid=(7, 8, 6),
                  rescan=("02", "s01e02a"), cifti=False, seed=0):
    """Write friends.fmriprep / friends.stimuli / friends_annotations under ``root``.

    Each run gets its own brain mask (each drops a different edge voxel of an ellipsoid, so their
    intersection is smaller than any one), a confounds TSV, and with ``cifti`` a fsLR 91k-named dtseries.
    ``rescan``: that (subject, run) is also scanned in a later session (ses-041) with other data.
    Returns {(subject, run, session): BOLD (X, Y, Z, T)} and the per-run masks."""
    root = Path(root)
    rng = np.random.default_rng(seed)
    idx = np.indices(grid).reshape(3, -1).T.astype(float)
    c = (np.asarray(grid) - 1) / 2
    base = ((((idx - c) / (np.asarray(grid) / 2)) ** 2).sum(1) <= 1.0).reshape(grid)
    edge = np.argwhere(base)
    bold, masks = {}, {}
    k = 0
    for s in subjects:
        sessions = [(run, f"{3 + i // 2:03d}") for i, run in enumerate(runs)]
        if rescan and rescan[0] == s:
            sessions.append((rescan[1], "041"))
        for run, ses in sessions:
            func = root / f"friends.fmriprep/sub-{s}/ses-{ses}/func"
            stem = f"sub-{s}_ses-{ses}_task-{run}"
            m = base.copy()
            m[tuple(edge[(7 * k) % len(edge)])] = False
            k += 1
            y = rng.standard_normal(grid + (n_trs,)).astype(np.float32) * 10 + 500
            save_nifti(func / f"{stem}_space-{SPACE}_desc-preproc_bold.nii.gz", y, tr=TR)
            save_nifti(func / f"{stem}_space-{SPACE}_desc-brain_mask.nii.gz", m.astype(np.uint8))
            (func / f"{stem}_space-{SPACE}_desc-preproc_bold.json").write_text(json.dumps({"RepetitionTime": TR}))
            write_confounds(func / f"{stem}_desc-confounds_timeseries.tsv", n_trs, rng)
            if cifti:
                write_dtseries(func / f"{stem}_space-fsLR_den-91k_bold.dtseries.nii",
                               rng.standard_normal((n_trs, len(brain_models()))).astype(np.float32))
            bold[(s, run, ses)], masks[(s, run, ses)] = y, m
    for i, run in enumerate(runs):
        season = int(run[1:3])
        write_movie(root / f"friends.stimuli/s{season}/friends_{run}.mkv", n_trs, seed=seed + i)
        write_speech2text(root / f"friends_annotations/annotation_results/Speech2Text/s{season}/"
                                 f"friends_{run}_model-AA_desc-wUtter_transcript.json", make_words(n_trs, seed + i))
    atlas = np.where(base, 1 + (np.indices(grid)[0] >= grid[0] // 2) + 2 * (np.indices(grid)[2] >= grid[2] // 2), 0)
    save_nifti(root / f"atlas/tpl-{SPACE}_atlas-Toy_dseg.nii.gz", atlas.astype(np.int16))
    (root / f"atlas/tpl-{SPACE}_atlas-Toy_dseg.tsv").write_text(
        "index\tname\n1\tleft_inferior\n2\tright_inferior\n3\tleft_superior\n4\tright_superior\n")
    return bold, masks


def brain_models():
    """A small fsLR-like grayordinate axis: 10 + 10 surface vertices and 8 subcortical voxels."""
    left = np.zeros(20, bool)
    left[::2] = True
    right = np.ones(14, bool)
    right[:4] = False
    vol = np.zeros((4, 4, 3), bool)
    vol[1:3, 1:3, 1:3] = True
    aff = np.diag([2.0, 2.0, 2.0, 1.0])
    return (nib.cifti2.BrainModelAxis.from_mask(left, name="CortexLeft")
            + nib.cifti2.BrainModelAxis.from_mask(right, name="CortexRight")
            + nib.cifti2.BrainModelAxis.from_mask(vol, affine=aff, name="thalamus_left"))


def write_dtseries(path, data):
    series = nib.cifti2.SeriesAxis(start=0.0, step=TR, size=data.shape[0], unit="SECOND")
    nib.save(nib.Cifti2Image(data, header=(series, brain_models())), str(path))
    return path


def fmriprep_config(root, out, **over):
    cfg = {"name": "cneuromod", "output": str(out), "data": {
        "root": str(root), "episodes": ["s01e01a", "s01e01b", "s01e02a"],
        "stimuli": {"video": "{root}/friends.stimuli/s{season}/friends_{episode}.mkv",
                    "transcript": ("{root}/friends_annotations/annotation_results/Speech2Text/s{season}/"
                                   "friends_{episode}_model-AA_desc-wUtter_transcript.json")},
        "bold": {"format": "bids", "dir": "{root}/friends.fmriprep", "subjects": ["01", "02"], "tr": TR,
                 "rois": f"{{root}}/atlas/tpl-{SPACE}_atlas-Toy_dseg.nii.gz",
                 "roi_names": f"{{root}}/atlas/tpl-{SPACE}_atlas-Toy_dseg.tsv",
                 "confounds": ["trans_x", "trans_y", "trans_z", "csf", "white_matter"]}}, **SMALL_MODEL}
    return _merge(cfg, over)


# ---- shared ------------------------------------------------------------------------------------------

SMALL_MODEL = {
    "model": {"backbone": "tiny", "conditions": ["joint", "no_vision", "no_language"],
              "tiny": {"hidden": 16, "layers": 2, "heads": 2, "vocab": 512, "patch": 16, "n_mels": 16}},
    "windows": {"frames": 1, "image_size": 32, "audio_rate": 8000},
    "align": {"delays": [1, 2], "trim": 1,
              "residuals": [{"name": "crossmodal", "target": "joint", "predictors": ["no_vision", "no_language"]}]},
    "fit": {"alphas": [1.0, 100.0, 10000.0], "chunk_voxels": 64},
    "stats": {"contrasts": [{"name": "vision_gain", "a": "joint", "b": "no_vision"},
                            {"name": "crossmodal_vs_0", "a": "crossmodal"}], "noise_ceiling": "none"},
    "report": {"title": "real layout"},
}


def _merge(base, over):
    out = json.loads(json.dumps(base))
    for dotted, value in over.items():
        node = out
        *parents, last = dotted.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out
