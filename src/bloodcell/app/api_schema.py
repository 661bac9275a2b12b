"""The JSON API's documented shapes (OpenAPI): a detection record and the one error body every failure
has. The endpoint returns plain dicts (the record of `bloodcell predict --json`); a test holds real
responses to these models, so the published schema cannot drift from what is sent."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class Detection(BaseModel):
    model_config = ConfigDict(extra="forbid")
    label: str = Field(description="class name")
    score: float = Field(description="detector score, 0..1")
    box: list[float] = Field(description="x1, y1, x2, y2 in the uploaded image's pixels", min_length=4, max_length=4)


class DetectRecord(BaseModel):
    """One image's result, as `bloodcell predict --json` writes it."""

    model_config = ConfigDict(extra="forbid")
    image: str = Field(description="the uploaded file's name")
    width: int
    height: int
    counts: dict[str, int] = Field(description="cells per class at the operating points")
    count_intervals: dict[str, list[int]] | None = Field(
        description="per class, the 90% interval [low, high] of the number of cells (null: no calibration)"
    )
    conf: list[float] = Field(description="the operating point of each class, in class order")
    scale: float = Field(description="factor the image was resized by so its cells match the model's trained size")
    exposure_gains: list[float] = Field(
        description="what each channel (R, G, B) was multiplied by before detection, to bring a dark or colour-cast "
        "field to the training images' background (1, 1, 1: left as it was)",
        min_length=3,
        max_length=3,
    )
    warnings: list[str] = Field(description="what makes these counts doubtful (e.g. grayscale, cell size not measured)")
    detections: list[Detection] = Field(
        description="boxes scored at or above min_score (default: the lowest class operating point); a box under its "
        "own class's operating point is listed but not counted"
    )
    model: str | None = Field(
        default=None, description="the model file that counted, name@sha256 prefix, as predict --json names it"
    )


class ErrorBody(BaseModel):
    """Every error: 400, 403, 413, 415 and 422 alike."""

    model_config = ConfigDict(extra="forbid")
    error: str = Field(description="what is wrong, naming the upload or option")


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


DETECT_RESPONSES: dict[int | str, dict] = {
    200: {"model": DetectRecord, "description": "the image's counts, intervals and boxes"},
    400: _error("a malformed request: an empty file, a broken multipart body, a Host header not served here"),
    403: _error("a POST from another site's page (Origin not allowed)"),
    413: _error("an upload over --max-upload-mb, or an image over --max-megapixels"),
    415: _error("not multipart/form-data, or a file that is not an image"),
    422: _error("an unknown, repeated or invalid option, a missing or extra form field, an undecodable image"),
}
