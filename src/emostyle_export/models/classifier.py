"""The paper's emotion classifier as a Keras builder (21 layers, 128x128x3 in).

Five blocks of Conv2D(3x3, valid, ReLU) -> BatchNorm -> MaxPool(2x2) with 16..256
filters, Dropout(0.25) after blocks 2 and 4, then Flatten, Dense 512, Dense 256
and a 7-way softmax: 1,052,519 parameters.
"""

from __future__ import annotations

from typing import Any

N_CLASSES = 7
INPUT_SHAPE = (128, 128, 3)


def build_classifier(input_shape: tuple[int, int, int] = INPUT_SHAPE, n_classes: int = N_CLASSES) -> Any:
    """Return the uncompiled ``keras.Sequential`` classifier."""
    import keras
    from keras import layers

    model = keras.Sequential(name="emotion_classifier")
    model.add(keras.Input(shape=input_shape, name="face"))
    for block, filters in enumerate((16, 32, 64, 128, 256), start=1):
        model.add(layers.Conv2D(filters, 3, activation="relu", name=f"conv{block}"))
        model.add(layers.BatchNormalization(name=f"bn{block}"))
        model.add(layers.MaxPooling2D(2, name=f"pool{block}"))
        if block in (2, 4):
            model.add(layers.Dropout(0.25, name=f"drop{block}"))
    model.add(layers.Flatten(name="flatten"))
    model.add(layers.Dense(512, activation="relu", name="fc1"))
    model.add(layers.Dense(256, activation="relu", name="fc2"))
    model.add(layers.Dense(n_classes, activation="softmax", name="probs"))
    return model
