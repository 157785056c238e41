"""Loki's push protobuf (``logproto.PushRequest``), built at import from a descriptor.

Field numbers follow Loki's ``pkg/push/push.proto``. Building the descriptor in
code with the protobuf runtime avoids a protoc step and a vendored ``_pb2``.
"""

from __future__ import annotations

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory, timestamp_pb2

_T = descriptor_pb2.FieldDescriptorProto


def _file() -> descriptor_pb2.FileDescriptorProto:
    f = descriptor_pb2.FileDescriptorProto(name="flowscope/loki_push.proto", package="logproto", syntax="proto3",
                                           dependency=["google/protobuf/timestamp.proto"])

    def msg(name, *fields):
        m = f.message_type.add(name=name)
        for fname, num, ftype, label, tname in fields:
            fd = m.field.add(name=fname, number=num, type=ftype, label=label)
            if tname:
                fd.type_name = tname
        return m

    opt, rep = _T.LABEL_OPTIONAL, _T.LABEL_REPEATED
    msg("LabelPairAdapter", ("name", 1, _T.TYPE_STRING, opt, None), ("value", 2, _T.TYPE_STRING, opt, None))
    msg("EntryAdapter",
        ("timestamp", 1, _T.TYPE_MESSAGE, opt, ".google.protobuf.Timestamp"),
        ("line", 2, _T.TYPE_STRING, opt, None),
        ("structuredMetadata", 3, _T.TYPE_MESSAGE, rep, ".logproto.LabelPairAdapter"))
    msg("StreamAdapter", ("labels", 1, _T.TYPE_STRING, opt, None),
        ("entries", 2, _T.TYPE_MESSAGE, rep, ".logproto.EntryAdapter"),
        ("hash", 3, _T.TYPE_UINT64, opt, None))
    msg("PushRequest", ("streams", 1, _T.TYPE_MESSAGE, rep, ".logproto.StreamAdapter"))
    return f


_pool = descriptor_pool.DescriptorPool()
_pool.AddSerializedFile(timestamp_pb2.DESCRIPTOR.serialized_pb)
_pool.Add(_file())
PushRequest = message_factory.GetMessageClass(_pool.FindMessageTypeByName("logproto.PushRequest"))
