"""The API's request and response shapes as pydantic models: the validation of every body (through
:func:`e5studio.http_body.parse`, after the key check) and what ``/openapi.json`` (and ``/docs``) declare.

A request model says a refusal in its own words (``refusal``: the field and what it must be, the words
clients have always got); :func:`body` and :func:`errors` put the models on a route, :func:`complete_openapi`
adds the request-body schemas and the key header as security schemes.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel, ConfigDict, Field, ValidationError, WithJsonSchema
from pydantic.json_schema import models_json_schema

from e5studio.http_body import RequestBody, json_type

REF = "#/components/schemas/{model}"

# -------------------------------------------------------------------------------------------- requests


class Params(BaseModel):
    """SambaStudio's ``params`` (typed ``{"name": {"type", "value"}}`` or plain); embeddings have none to apply."""

    model_config = ConfigDict(extra="allow")


def _params_refusal(body: dict[str, Any]) -> str | None:
    params = body.get("params")
    return "'params' must be a JSON object" if params is not None and not isinstance(params, dict) else None


def _texts_refusal(value: Any, field: str) -> str | None:
    """What is wrong with a list of texts (a bare string is a list of one only where the shape says so)."""
    if not isinstance(value, list):
        return f"'{field}' must be a list of strings, got {json_type(value)}"
    if not value:
        return f"'{field}' is an empty list; send at least one text"
    for i, item in enumerate(value):
        if not isinstance(item, str):
            return f"'{field}[{i}]' must be a string, got {json_type(item)}"
    return None


class _TextsRequest(RequestBody):
    """A SambaStudio shape that sends its texts as a list of strings under one field."""

    texts_field: ClassVar[str]

    @classmethod
    def refusal(cls, body: dict[str, Any], error: ValidationError) -> str:
        field = cls.texts_field
        if (params := _params_refusal(body)) is not None:
            return params
        if field not in body:
            return f"request body needs '{field}': a list of strings"
        return _texts_refusal(body[field], field) or super().refusal(body, error)


class NlpRequest(_TextsRequest):
    texts_field: ClassVar[str] = "inputs"
    inputs: list[str] = Field(min_length=1, description="texts to embed (at most the endpoint's batch size)")
    params: Params | None = None


class GenericRequest(_TextsRequest):
    texts_field: ClassVar[str] = "instances"
    instances: list[str] = Field(min_length=1, description="texts to embed (at most the endpoint's batch size)")
    params: Params | None = None


class V2Item(RequestBody):
    # the default None stands for "no id" (the item's index is sent back); a null sent is refused, as a bool or
    # a float is, since the id is echoed back unchanged
    id: str | int = Field(None, description=  # type: ignore[assignment]
                          "echoed back unchanged (default: the item's index as a string)")
    value: str


class V2Request(RequestBody):
    items: list[V2Item] = Field(min_length=1)
    params: Params | None = None

    @classmethod
    def refusal(cls, body: dict[str, Any], error: ValidationError) -> str:
        if (params := _params_refusal(body)) is not None:
            return params
        items = body.get("items")
        if not isinstance(items, list) or not items:
            return "'items' must be a non-empty list of {\"id\": str, \"value\": str} objects"
        for i, item in enumerate(items):
            if not isinstance(item, dict) or not isinstance(item.get("value"), str):
                return f"'items[{i}]' must be an object with a string 'value'"
            item_id = item.get("id", str(i))
            if isinstance(item_id, bool) or not isinstance(item_id, (str, int)):
                return f"'items[{i}].id' must be a string or an integer (it is echoed back unchanged)"
        return super().refusal(body, error)


MODEL_REQUIRED = "'model' is required: the name or id of an e5studio endpoint"


class OpenAIRequest(RequestBody):
    model: str = Field(min_length=1, description="the name or id of an e5studio endpoint")
    input: str | Annotated[list[str], Field(min_length=1)] = Field(description="a text or a non-empty list of texts")
    encoding_format: Literal["float", "base64"] | None = "float"
    # judged by the service against the model's dimension (the message names it)
    dimensions: Annotated[Any, WithJsonSchema({"anyOf": [{"type": "integer"}, {"type": "null"}]})] = Field(
        None, description="must equal the model's dimension if given")
    user: Annotated[Any, WithJsonSchema({"anyOf": [{"type": "string"}, {"type": "null"}]})] = None  # not used
    input_type: Literal["query", "passage", "none"] | None = Field(
        None, description="E5 prefix by role, added where a text lacks it (default: the endpoint's input_type)")

    @classmethod
    def refusal(cls, body: dict[str, Any], error: ValidationError) -> str:
        model = body.get("model")
        if not isinstance(model, str) or not model:
            return MODEL_REQUIRED
        if "input" not in body:
            return "'input' is required: a string or a list of strings"
        value = body["input"]
        if isinstance(value, list) and value and all(isinstance(v, (int, list)) for v in value):
            return ("'input' as token arrays is not supported: send strings (E5 uses its own WordPiece "
                    "tokenizer); with LangChain's OpenAIEmbeddings set check_embedding_ctx_length=False")
        if not isinstance(value, str) and (texts := _texts_refusal(value, "input")) is not None:
            return texts
        encoding_format = body.get("encoding_format")
        if encoding_format not in ("float", "base64", None):
            return f"'encoding_format' must be 'float' or 'base64', got {encoding_format!r}"
        if body.get("input_type") not in ("query", "passage", "none", None):
            return f"'input_type' must be 'query', 'passage' or 'none', got {body.get('input_type')!r}"
        return super().refusal(body, error)


class ProjectCreate(BaseModel):
    name: str
    description: str = ""


class EndpointCreate(BaseModel):
    project: str = Field(description="project name or id")
    name: str
    model: str | None = Field(None, description="hub id, alias or local directory (default: the server's model)")
    batch_size: Literal[1, 32] = Field(32, description="32 for vectorising a knowledge base, 1 for a live service")
    description: str = ""
    precision: str | None = Field(None, description="fp32 or int8 (default: the server's --precision)")
    input_type: Literal["query", "passage", "none"] = Field(
        "none", description="the E5 prefix added where a request names none and a text lacks it (default none: "
                            "texts as sent, SambaStudio's behaviour)")
    force: bool = Field(False, description="deploy a fine-tuned model that lost more than 0.01 nDCG@10 against its "
                                           "base model on an out-of-domain evaluation set (the deploy gate)")


# ------------------------------------------------------------------------------------------- responses


class ErrorDetail(BaseModel):
    message: str
    type: str
    code: int
    request_id: str | None = Field(None, description="on a 500: the id the server logged the failure under")


class ErrorBody(BaseModel):
    error: ErrorDetail


class NlpResponse(BaseModel):
    data: list[list[float]]


class GenericResponse(BaseModel):
    predictions: list[list[float]]


class V2ResponseItem(BaseModel):
    id: str | int
    value: list[float]


class V2Response(BaseModel):
    items: list[V2ResponseItem]


class OpenAIEmbedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: list[float] | str = Field(description="floats, or base64 of little-endian float32")


class OpenAIUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class OpenAIResponse(BaseModel):
    object: Literal["list"]
    data: list[OpenAIEmbedding]
    model: str
    usage: OpenAIUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"]
    owned_by: str
    precision: str
    kernels: str  # the CPU kernel set this replica computes with (engine/cpu.py: CpuFeatures.describe)
    created: int


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[ModelCard]


class Readiness(BaseModel):
    ready: bool  # this replica has loaded (or failed) the model of every endpoint it found at start
    replica: str  # this replica's id
    counts: dict[str, int]  # status on this replica (Live, Deploying, Failed) -> how many endpoints
    # with the admin token only (no endpoint is named to anyone else):
    deploying: list[str] | None = None  # endpoints whose model this replica is still loading (or not started)
    endpoints: dict[str, str] | None = None  # endpoint -> its status on this replica
    reasons: dict[str, str] | None = None  # deploying endpoint -> what it is doing ("downloading 412/1,340 MB")
    replicas: dict[str, str] | None = None  # endpoint -> "ready on N of M replicas" (recent heartbeats)
    store: str | None = None  # "unreachable: why" while the control store cannot be read (else absent)


class KbSearchRequest(BaseModel):
    """A knowledge-base search (the route checks each field itself and names what is wrong)."""

    query: str = Field(description="the query text ('query: ' is added where missing)")
    k: int = Field(10, description="hits, 1 to 1000")
    filter: dict[str, str | int | float | bool | None] | None = Field(
        None, description="metadata field -> value: only chunks whose document has these fields equal")
    by_document: bool = Field(False, description="the best chunk of each document")


class KbActivate(BaseModel):
    version: int = Field(description="a Ready version of the knowledge base: searches use it from now on")


class KbCreateRequest(RequestBody):
    name: str = Field(description="the knowledge base's name (letters, digits, '_', '.', '-')")
    endpoint: str = Field(description="the endpoint (name or id, of the project) whose model embeds it")
    data: str = Field(description="the documents: a JSONL, Parquet or text file, or a folder of .txt/.md files, "
                                  "on the server")
    format: Literal["auto", "jsonl", "parquet", "text"] = "auto"
    text_field: str = Field("", description="JSON field / Parquet column of the text (default contents)")
    id_field: str = Field("", description="JSON field / Parquet column of the document id (default: the line)")
    chunking: Literal["tokens", "none"] = "tokens"
    chunk_tokens: int | None = Field(None, description="word pieces per chunk (default: what fits the window)")
    overlap: int = Field(32, description="word pieces shared by consecutive chunks")
    store_url: str = Field("", description="PostgreSQL + pgvector URL without a password (default: embedded)")
    description: str = ""


class KbReembedRequest(RequestBody):
    endpoint: str | None = Field(None, description="embed with this endpoint of the project (default: its own)")


REQUEST_MODELS: list[type[BaseModel]] = [NlpRequest, GenericRequest, V2Request, OpenAIRequest, ProjectCreate,
                                         EndpointCreate, KbSearchRequest, KbActivate, KbCreateRequest,
                                         KbReembedRequest]

# the statuses each kind of route can answer besides 2xx (every route: 405 on a wrong method, 408 on a
# body that does not arrive in time, 500 on a bug)
COMMON = (405, 408, 500)
INFERENCE_ERRORS = (400, 401, 403, 404, 413, 429, 499, 503, *COMMON)
ADMIN_ERRORS = (400, 401, 403, 404, 409, 413, 429, *COMMON)
PUBLIC_ERRORS = COMMON


def body(model: type[BaseModel]) -> dict[str, Any]:
    """``openapi_extra`` of a route whose JSON body is ``model`` (its schema is added by complete_openapi)."""
    return {"requestBody": {"required": True, "content": {"application/json": {
        "schema": {"$ref": REF.format(model=model.__name__)}}}}}


def errors(*statuses: int, ok: type[BaseModel] | None = None) -> dict[int | str, dict[str, Any]]:
    """``responses`` of a route: each error status with the one error body, and the 200 answer's model where
    given (declared only: the route builds its answer itself, nothing is validated on the way out)."""
    responses: dict[int | str, dict[str, Any]] = {status: {"model": ErrorBody, "description": "error"}
                                                  for status in statuses}
    if ok is not None:
        responses[200] = {"model": ok, "description": "success"}
    return responses


def install_openapi(app: FastAPI, inference_paths: set[str], admin_prefix: str) -> None:
    """``app.openapi()`` (served as /openapi.json and read by /docs) as :func:`complete_openapi` makes it."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(title=app.title, version=app.version, description=app.description,
                                 routes=app.routes)
            app.openapi_schema = complete_openapi(schema, inference_paths, admin_prefix)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete_openapi(schema: dict[str, Any], inference_paths: set[str], admin_prefix: str) -> dict[str, Any]:
    """The request models' schemas, the key header and bearer token as security schemes (inference routes
    take either, the admin API the bearer admin token), and no 422 (the server answers 400 instead)."""
    _, defs = models_json_schema([(m, "validation") for m in REQUEST_MODELS], ref_template=REF)
    components = schema.setdefault("components", {})
    components.setdefault("schemas", {}).update(defs.get("$defs", {}))
    components["securitySchemes"] = {
        "key": {"type": "apiKey", "in": "header", "name": "key", "description": "the endpoint key (SambaStudio)"},
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "an endpoint key (OpenAI clients), or the admin token for /api/admin"},
    }
    components.get("schemas", {}).pop("HTTPValidationError", None)
    components.get("schemas", {}).pop("ValidationError", None)
    for path, operations in schema.get("paths", {}).items():
        for operation in operations.values():
            operation.get("responses", {}).pop("422", None)
            if path in inference_paths:
                operation["security"] = [{"key": []}, {"bearer": []}]
            elif path.startswith(admin_prefix):
                operation["security"] = [{"bearer": []}]
    return schema
