import NIOCore

/// Bounds on what one RTMP connection may make the server buffer.
public struct RTMPLimits: Sendable, Equatable {
    /// A message (video frame, command) larger than this closes the connection.
    public var maxMessageSize = 8 * 1024 * 1024
    /// Bytes of partly received messages, over all chunk streams.
    public var maxBufferedBytes = 16 * 1024 * 1024
    /// Chunk streams a peer may use at once.
    public var maxChunkStreams = 64
    public init() {}
}

/// Splits the inbound byte stream into chunks and reassembles messages (RTMP 1.0, section 5.3).
/// Set Chunk Size and Abort take effect here, because they change how the next bytes parse;
/// they are passed on too.
public struct RTMPChunkDecoder: ByteToMessageDecoder {
    public typealias InboundOut = RTMPMessage

    struct ChunkStream {
        var timestamp: UInt32 = 0
        /// The last timestamp field: absolute after type 0, a delta after types 1 and 2.
        var timestampField: UInt32 = 0
        var extended = false
        var length = 0
        var type: UInt8 = 0
        var messageStreamId: UInt32 = 0
        var partial: ByteBuffer?
        /// Bytes counted against the buffering limit for `partial`.
        var reserved = 0
    }

    public let limits: RTMPLimits
    public private(set) var chunkSize = 128
    private var streams: [UInt32: ChunkStream] = [:]
    private var bufferedBytes = 0

    public init(limits: RTMPLimits = RTMPLimits()) { self.limits = limits }

    public mutating func decode(context: ChannelHandlerContext, buffer: inout ByteBuffer) throws -> DecodingState {
        guard let message = try next(&buffer) else { return .needMoreData }
        if let message = message { context.fireChannelRead(wrapInboundOut(message)) }
        return .continue
    }

    public mutating func decodeLast(context: ChannelHandlerContext, buffer: inout ByteBuffer, seenEOF: Bool) throws -> DecodingState {
        while try decode(context: context, buffer: &buffer) == .continue {}
        return .needMoreData
    }

    /// Consumes one whole chunk if the buffer holds one. Returns nil when more bytes are
    /// needed, `.some(nil)` for a chunk that did not finish a message, else the message.
    public mutating func next(_ buffer: inout ByteBuffer) throws -> RTMPMessage?? {
        var b = buffer
        guard let b0 = b.readInteger(as: UInt8.self) else { return nil }
        let fmt = b0 >> 6
        var csid = UInt32(b0 & 0x3F)
        if csid == 0 {
            guard let x = b.readInteger(as: UInt8.self) else { return nil }
            csid = 64 + UInt32(x)
        } else if csid == 1 {
            guard let lo = b.readInteger(as: UInt8.self), let hi = b.readInteger(as: UInt8.self) else { return nil }
            csid = 64 + UInt32(lo) + UInt32(hi) * 256
        }
        var s: ChunkStream
        if let known = streams[csid] {
            s = known
        } else {
            guard fmt == 0 else {
                throw RTMPError.protocolViolation("RTMP chunk stream \(csid) starts without a full (type 0) header")
            }
            guard streams.count < limits.maxChunkStreams else {
                throw RTMPError.tooLarge("RTMP peer uses more than \(limits.maxChunkStreams) chunk streams")
            }
            s = ChunkStream()
        }
        let continuing = fmt == 3 && s.partial != nil
        var field: UInt32 = 0
        if fmt <= 2 {
            guard let t = b.readUInt24() else { return nil }
            field = t
        }
        if fmt <= 1 {
            guard let length = b.readUInt24(), let type = b.readInteger(as: UInt8.self) else { return nil }
            s.length = Int(length)
            s.type = type
        }
        if fmt == 0 {
            guard let sid = b.readInteger(endianness: .little, as: UInt32.self) else { return nil }
            s.messageStreamId = sid
        }
        if fmt <= 2 {
            s.extended = field == 0xFF_FFFF
        }
        if s.extended {
            guard let ext = b.readInteger(as: UInt32.self) else { return nil }
            if fmt <= 2 { field = ext }
            else if !continuing { field = ext }
        }
        if !continuing {
            switch fmt {
            case 0: s.timestamp = field; s.timestampField = field
            case 1, 2: s.timestamp &+= field; s.timestampField = field
            default: s.timestamp &+= s.timestampField
            }
            guard s.length <= limits.maxMessageSize else {
                throw RTMPError.tooLarge("RTMP message of \(s.length) bytes exceeds the limit of \(limits.maxMessageSize)")
            }
            if s.partial != nil { bufferedBytes -= s.reserved; s.partial = nil; s.reserved = 0 }
        }
        let have = s.partial?.readableBytes ?? 0
        let take = min(chunkSize, s.length - have)
        guard b.readableBytes >= take else { return nil }
        // The whole chunk is here: commit.
        let data = b.readSlice(length: take)!
        buffer = b
        if s.partial == nil && take == s.length {
            streams[csid] = s
            return .some(try complete(csid, s, payload: data))
        }
        if s.partial == nil {
            guard bufferedBytes + s.length <= limits.maxBufferedBytes else {
                throw RTMPError.tooLarge("RTMP peer has more than \(limits.maxBufferedBytes) bytes of unfinished messages")
            }
            s.partial = ByteBufferAllocator().buffer(capacity: s.length)
            s.reserved = s.length
            bufferedBytes += s.length
        }
        var d = data
        s.partial!.writeBuffer(&d)
        if s.partial!.readableBytes == s.length {
            let payload = s.partial!
            s.partial = nil
            bufferedBytes -= s.reserved
            s.reserved = 0
            streams[csid] = s
            return .some(try complete(csid, s, payload: payload))
        }
        streams[csid] = s
        return .some(nil)
    }

    private mutating func complete(_ csid: UInt32, _ s: ChunkStream, payload: ByteBuffer) throws -> RTMPMessage {
        let message = RTMPMessage(chunkStreamId: csid, type: RTMPMessageType(rawValue: s.type), messageStreamId: s.messageStreamId,
                                  timestamp: s.timestamp, payload: payload)
        switch message.type {
        case .setChunkSize:
            guard let size = payload.getInteger(at: payload.readerIndex, as: UInt32.self) else {
                throw RTMPError.protocolViolation("RTMP Set Chunk Size without a size")
            }
            let value = Int(size & 0x7FFF_FFFF)
            guard value >= 1 else { throw RTMPError.protocolViolation("RTMP Set Chunk Size of 0") }
            chunkSize = value
        case .abort:
            if let id = payload.getInteger(at: payload.readerIndex, as: UInt32.self), var other = streams[id], other.partial != nil {
                bufferedBytes -= other.reserved
                other.partial = nil
                other.reserved = 0
                streams[id] = other
            }
        default: break
        }
        return message
    }
}

/// Splits outbound messages into chunks of the size this side announced.
public final class RTMPChunkEncoder: MessageToByteEncoder {
    public typealias OutboundIn = RTMPMessage
    public private(set) var chunkSize = 128

    public init() {}

    /// An encoder for a connection whose chunk size was already announced.
    public init(chunkSize: Int) { self.chunkSize = chunkSize }

    public func encode(data message: RTMPMessage, out: inout ByteBuffer) throws {
        var payload = message.payload
        let extended = message.timestamp >= 0xFF_FFFF
        Self.writeBasicHeader(fmt: 0, csid: message.chunkStreamId, into: &out)
        out.writeUInt24(extended ? 0xFF_FFFF : message.timestamp)
        out.writeUInt24(UInt32(min(payload.readableBytes, 0xFF_FFFF)))
        out.writeInteger(message.type.rawValue)
        out.writeInteger(message.messageStreamId, endianness: .little)
        if extended { out.writeInteger(message.timestamp) }
        var first = true
        while first || payload.readableBytes > 0 {
            if !first {
                Self.writeBasicHeader(fmt: 3, csid: message.chunkStreamId, into: &out)
                if extended { out.writeInteger(message.timestamp) }
            }
            first = false
            var slice = payload.readSlice(length: min(chunkSize, payload.readableBytes))!
            out.writeBuffer(&slice)
        }
        if message.type == .setChunkSize, let size = message.payload.getInteger(at: message.payload.readerIndex, as: UInt32.self),
            size > 0
        {
            chunkSize = Int(size & 0x7FFF_FFFF)
        }
    }

    static func writeBasicHeader(fmt: UInt8, csid: UInt32, into out: inout ByteBuffer) {
        if csid < 64 {
            out.writeInteger(fmt << 6 | UInt8(csid))
        } else if csid < 320 {
            out.writeInteger(fmt << 6)
            out.writeInteger(UInt8(csid - 64))
        } else {
            out.writeInteger(fmt << 6 | 1)
            out.writeInteger(UInt8((csid - 64) & 0xFF))
            out.writeInteger(UInt8((csid - 64) >> 8))
        }
    }
}

extension ByteBuffer {
    mutating func readUInt24() -> UInt32? {
        guard let hi = getInteger(at: readerIndex, as: UInt8.self), let lo = getInteger(at: readerIndex + 1, as: UInt16.self) else {
            return nil
        }
        moveReaderIndex(forwardBy: 3)
        return UInt32(hi) << 16 | UInt32(lo)
    }

    mutating func writeUInt24(_ v: UInt32) {
        writeInteger(UInt8((v >> 16) & 0xFF))
        writeInteger(UInt8((v >> 8) & 0xFF))
        writeInteger(UInt8(v & 0xFF))
    }
}
