import NIOCore

/// Demuxes a room's stream whatever its container, told by its first bytes: FLV (RTMP ingest,
/// FLV StreamData) or MPEG-TS (TS StreamData). Anything else is `UnsupportedMedia`.
public struct StreamDemuxer: Sendable {
    private enum Kind: Sendable {
        case unknown
        case flv(FLVDemuxer)
        case ts(TSDemuxer)
    }

    private var kind = Kind.unknown
    private var head = ByteBuffer()

    public init() {}

    public mutating func feed(_ bytes: ByteBuffer) throws -> [Demuxed] {
        switch kind {
        case .flv(var d):
            defer { kind = .flv(d) }
            return try d.feed(bytes)
        case .ts(var d):
            defer { kind = .ts(d) }
            return try d.feed(bytes)
        case .unknown:
            var b = bytes
            head.writeBuffer(&b)
            guard head.readableBytes >= 3 else { return [] }
            let start = head.readerIndex
            if head.getBytes(at: start, length: 3) == Array("FLV".utf8) {
                kind = .flv(FLVDemuxer())
            } else if head.getInteger(at: start, as: UInt8.self) == TSDemuxer.syncByte {
                kind = .ts(TSDemuxer())
            } else {
                throw UnsupportedMedia("the stream is neither FLV nor MPEG-TS: it plays over Watch only")
            }
            let first = head
            head = ByteBuffer()
            return try feed(first)
        }
    }

    /// What a container may still hold back at the end of a stream (TS keeps the last frame of
    /// each elementary stream until the next one starts).
    public mutating func flush() -> [Demuxed] {
        if case .ts(var d) = kind {
            defer { kind = .ts(d) }
            return d.flush()
        }
        return []
    }
}
