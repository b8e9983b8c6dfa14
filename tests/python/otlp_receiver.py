"""A real OTLP/gRPC trace receiver (TraceService.Export) on 127.0.0.1, port picked by the OS.

Usage: python otlp_receiver.py OUT_JSONL
Prints `port N` once listening; writes every received span as one JSON line to OUT_JSONL
(flushed per export): trace_id, span_id, parent_span_id (hex), name, attributes, links,
service_name. Runs until stdin closes (its parent exits or closes the pipe).
"""
import json
import sys
from concurrent import futures

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

out = open(sys.argv[1], "a", buffering=1)


def value(v):
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    return getattr(v, kind) if kind else None


class Receiver(trace_service_pb2_grpc.TraceServiceServicer):
    def Export(self, request, context):
        for rs in request.resource_spans:
            res = {a.key: value(a.value) for a in rs.resource.attributes}
            for ss in rs.scope_spans:
                for s in ss.spans:
                    out.write(json.dumps({
                        "trace_id": s.trace_id.hex(),
                        "span_id": s.span_id.hex(),
                        "parent_span_id": s.parent_span_id.hex(),
                        "name": s.name,
                        "attributes": {a.key: value(a.value) for a in s.attributes},
                        "links": [{"trace_id": l.trace_id.hex(), "span_id": l.span_id.hex()} for l in s.links],
                        "service_name": res.get("service.name"),
                    }) + "\n")
        return trace_service_pb2.ExportTraceServiceResponse()


server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
trace_service_pb2_grpc.add_TraceServiceServicer_to_server(Receiver(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(f"port {port}", flush=True)
sys.stdin.read()  # until the test closes the pipe
server.stop(0)
