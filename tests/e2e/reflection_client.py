#!/usr/bin/python3
"""An independent gRPC client of the daemon that knows nothing of its API but what server reflection says.

Debian's python3-grpcio and python3-protobuf; the reflection protocol's own messages come from a descriptor
set protoc made of tests/e2e/reflection/reflection_v1alpha.proto (--reflection-desc). Steps, each printed:
  1. list the services                               -> "service NAME" lines
  2. fetch the file that defines SERVICE and its dependencies, build a descriptor pool from them alone
                                                     -> "file NAME" lines
  3. call SERVICE.List with messages built from those descriptors, with the bearer token
                                                     -> "list ok: N sessions: ID..."
  4. the same without the token                      -> "without token: CODE"
Exit status 0 when every step worked (step 4 must be refused); 1 otherwise, with the reason on stderr.
Usage: reflection_client.py --target HOST:PORT --token-file FILE --reflection-desc FILE [--service NAME]
"""
import argparse
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"


def message_class(pool, full_name):
    desc = pool.FindMessageTypeByName(full_name)
    get = getattr(message_factory, "GetMessageClass", None)  # protobuf >= 4.22
    return get(desc) if get else message_factory.MessageFactory(pool).GetPrototype(desc)


def add_files(pool, files):
    """Adds serialized FileDescriptorProtos, dependencies first, whatever order they came in."""
    pending = {}
    for blob in files:
        fdp = descriptor_pb2.FileDescriptorProto.FromString(blob)
        pending[fdp.name] = fdp
    added = set()
    while pending:
        progress = False
        for name, fdp in list(pending.items()):
            if all(dep in added or dep not in pending for dep in fdp.dependency):
                pool.Add(fdp)
                added.add(name)
                del pending[name]
                progress = True
        if not progress:
            raise RuntimeError("dependency cycle among " + ", ".join(pending))
    return added


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", required=True)
    ap.add_argument("--token-file", required=True)
    ap.add_argument("--reflection-desc", required=True)
    ap.add_argument("--service", default="duvo.sandbox.v1.Sandboxes")
    args = ap.parse_args()
    with open(args.token_file) as f:
        token = f.read().strip()
    auth = [("authorization", "Bearer " + token)]

    # The reflection protocol's messages, from protoc's descriptor set.
    rpool = descriptor_pool.DescriptorPool()
    with open(args.reflection_desc, "rb") as f:
        for fdp in descriptor_pb2.FileDescriptorSet.FromString(f.read()).file:
            rpool.Add(fdp)
    Request = message_class(rpool, "grpc.reflection.v1alpha.ServerReflectionRequest")
    Response = message_class(rpool, "grpc.reflection.v1alpha.ServerReflectionResponse")

    channel = grpc.insecure_channel(args.target)
    info = channel.stream_stream(REFLECTION, request_serializer=lambda m: m.SerializeToString(),
                                 response_deserializer=Response.FromString)

    def ask(**request):
        (answer,) = list(info(iter([Request(**request)]), metadata=auth, timeout=20))
        if answer.HasField("error_response"):
            raise RuntimeError("reflection error %d: %s" % (answer.error_response.error_code,
                                                            answer.error_response.error_message))
        return answer

    # 1. The services.
    services = [s.name for s in ask(list_services="*").list_services_response.service]
    for name in services:
        print("service", name)
    if args.service not in services:
        print("reflection does not list", args.service, file=sys.stderr)
        return 1

    # 2. The file defining the service, with its dependencies, into a pool of our own.
    pool = descriptor_pool.DescriptorPool()
    files = list(ask(file_containing_symbol=args.service).file_descriptor_response.file_descriptor_proto)
    known = set()
    while True:
        known |= add_files(pool, files) if files else set()
        missing = set()
        for name in known:
            for dep in pool.FindFileByName(name).dependencies:
                if dep.name not in known:
                    missing.add(dep.name)
        if not missing:
            break
        files = []
        for name in sorted(missing):
            files += ask(file_by_filename=name).file_descriptor_response.file_descriptor_proto
    for name in sorted(known):
        print("file", name)

    # 3. Service.List from the reflected descriptors only.
    method = pool.FindServiceByName(args.service).methods_by_name["List"]
    In = message_class(pool, method.input_type.full_name)
    Out = message_class(pool, method.output_type.full_name)
    list_call = channel.unary_unary("/%s/List" % args.service, request_serializer=lambda m: m.SerializeToString(),
                                    response_deserializer=Out.FromString)
    reply = list_call(In(), metadata=auth, timeout=20)
    ids = [s.id for s in reply.sessions]
    print("list ok: %d sessions: %s" % (len(ids), " ".join(ids)))

    # 4. Without the token the API refuses.
    try:
        list_call(In(), timeout=20)
    except grpc.RpcError as e:
        print("without token:", e.code().name)
        return 0 if e.code() == grpc.StatusCode.UNAUTHENTICATED else 1
    print("without token: answered", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
