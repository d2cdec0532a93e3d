import NIOCore

/// One frame of the LiveRoom RPC protocol (docs/PROTOCOL.md):
/// `length:u32be | type:u8 | flags:u8 | call_id:u32be | payload`, where length counts
/// everything after the length field.
public struct Frame: Sendable, Hashable {
    public var type: FrameType
    public var flags: FrameFlags
    public var callID: UInt32
    public var payload: ByteBuffer
    /// Sent after `payload` without copying; only MESSAGE frames with `.attachment` carry one.
    public var attachment: ByteBuffer?

    public init(_ type: FrameType, flags: FrameFlags = [], callID: UInt32, payload: ByteBuffer = ByteBuffer(), attachment: ByteBuffer? = nil) {
        self.type = type
        self.flags = flags
        self.callID = callID
        self.payload = payload
        self.attachment = attachment
    }

    /// Bytes after the 10-byte header: what counts against flow control and the maximum frame size.
    public var payloadLength: Int {
        payload.readableBytes + (attachment.map { $0.readableBytes + 4 } ?? 0)
    }

    public static let headerLength = 10
    /// The bytes a client sends first on every connection.
    public static let preface: [UInt8] = Array("LRPC/1\r\n".utf8)
    public static let defaultMaxFrameSize = 4 * 1024 * 1024
    /// Flow-control credit each side starts with, per call and direction, in payload bytes.
    public static let initialWindow = 1024 * 1024
}

public struct FrameType: RawRepresentable, Sendable, Hashable, CustomStringConvertible {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }

    public static let headers = FrameType(rawValue: 1)
    public static let message = FrameType(rawValue: 2)
    public static let end = FrameType(rawValue: 3)
    public static let status = FrameType(rawValue: 4)
    public static let cancel = FrameType(rawValue: 5)
    public static let windowUpdate = FrameType(rawValue: 6)
    public static let ping = FrameType(rawValue: 7)
    public static let pong = FrameType(rawValue: 8)
    public static let goAway = FrameType(rawValue: 9)

    public var description: String {
        let names = ["0", "HEADERS", "MESSAGE", "END", "STATUS", "CANCEL", "WINDOW_UPDATE", "PING", "PONG", "GOAWAY"]
        return Int(rawValue) < names.count ? names[Int(rawValue)] : "TYPE_\(rawValue)"
    }
}

public struct FrameFlags: OptionSet, Sendable, Hashable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// HEADERS or MESSAGE: the sender sends no more messages on this call (half-close).
    public static let endStream = FrameFlags(rawValue: 1)
    /// MESSAGE: the payload is `u32be body length | body | attachment`.
    public static let attachment = FrameFlags(rawValue: 2)
}

/// What the frame decoder produces.
public enum FrameEvent: Sendable, Hashable {
    case frame(Frame)
    /// A frame longer than the maximum: its header was read and its payload is being skipped.
    case oversized(type: FrameType, callID: UInt32, length: Int)
}

/// Connection-level protocol violations: the connection is closed after a GOAWAY that says why.
public struct FrameError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    public init(_ description: String) { self.description = description }
}

/// Splits the byte stream into frames. Frames over the maximum size are reported and skipped
/// as their bytes arrive, so memory never grows with a peer's length field. The connection
/// handlers run it themselves (`NIOSingleStepByteToMessageProcessor`), so frames reach them
/// without a trip down the pipeline; it also works as a `ByteToMessageHandler`.
public struct FrameDecoder: NIOSingleStepByteToMessageDecoder {
    public typealias InboundOut = FrameEvent

    public let maxFrameSize: Int
    private var awaitingPreface: Bool
    private var skipping = 0

    /// - Parameter expectPreface: true on the server side of a connection.
    public init(maxFrameSize: Int = Frame.defaultMaxFrameSize, expectPreface: Bool) {
        self.maxFrameSize = maxFrameSize
        self.awaitingPreface = expectPreface
    }

    public mutating func decode(buffer: inout ByteBuffer) throws -> FrameEvent? {
        try next(&buffer)
    }

    public mutating func decodeLast(buffer: inout ByteBuffer, seenEOF: Bool) throws -> FrameEvent? {
        try decode(buffer: &buffer)
    }

    /// Decodes every complete frame in `bytes` (for fuzzing and tools; channels use the handler).
    public mutating func decodeAll(_ bytes: inout ByteBuffer) throws -> [FrameEvent] {
        var events: [FrameEvent] = []
        while let event = try next(&bytes) { events.append(event) }
        return events
    }

    /// The next event, or nil when more bytes are needed. The preface and the payload of an
    /// oversized frame are consumed on the way, without an event. (A single optional: a nested
    /// one is copied through the runtime's generic enum code, which showed in profiles.)
    mutating func next(_ buffer: inout ByteBuffer) throws -> FrameEvent? {
        if awaitingPreface {
            let have = min(buffer.readableBytes, Frame.preface.count)
            guard buffer.readableBytesView.prefix(have).elementsEqual(Frame.preface.prefix(have)) else {
                throw FrameError("bad connection preface: expected \"LRPC/1\\r\\n\" (is this a LiveRoom RPC client?)")
            }
            guard have == Frame.preface.count else { return nil }
            buffer.moveReaderIndex(forwardBy: have)
            awaitingPreface = false
        }
        if skipping > 0 {
            let n = min(skipping, buffer.readableBytes)
            buffer.moveReaderIndex(forwardBy: n)
            skipping -= n
            guard skipping == 0 else { return nil }
        }
        guard let length = buffer.getInteger(at: buffer.readerIndex, as: UInt32.self) else { return nil }
        guard length >= 6 else {
            throw FrameError("frame length \(length) is shorter than the 6-byte frame header")
        }
        guard buffer.readableBytes >= Frame.headerLength else { return nil }
        let (rawType, rawFlags, callID) = buffer.withUnsafeReadableBytes { header in
            (header[4], header[5], UInt32(bigEndian: header.loadUnaligned(fromByteOffset: 6, as: UInt32.self)))
        }
        let payloadLength = Int(length) - 6
        if payloadLength > maxFrameSize {
            buffer.moveReaderIndex(forwardBy: Frame.headerLength)
            skipping = payloadLength
            return .oversized(type: FrameType(rawValue: rawType), callID: callID, length: payloadLength)
        }
        guard buffer.readableBytes >= Frame.headerLength + payloadLength else { return nil }
        buffer.moveReaderIndex(forwardBy: Frame.headerLength)
        let payload = buffer.readSlice(length: payloadLength)!
        return .frame(Frame(FrameType(rawValue: rawType), flags: FrameFlags(rawValue: rawFlags), callID: callID, payload: payload))
    }
}

/// Writes frames. A small payload is copied next to its header (one write); a large payload
/// and any attachment are written as they are, so one media buffer can go to many viewers uncopied.
public final class FrameEncoder: ChannelOutboundHandler {
    public typealias OutboundIn = Frame
    public typealias OutboundOut = ByteBuffer

    static let copyLimit = 1024

    public init() {}

    public func write(context: ChannelHandlerContext, data: NIOAny, promise: EventLoopPromise<Void>?) {
        Self.write(unwrapOutboundIn(data), to: context, allocator: context.channel.allocator, promise: promise)
    }

    /// The 10-byte header, and the body length that precedes the body when there is an attachment.
    private static func writeHeader(_ frame: Frame, into buffer: inout ByteBuffer) {
        // One bounds check and one copy for the whole header, not one per field.
        buffer.writeMultipleIntegers(UInt32(6 + frame.payloadLength), frame.type.rawValue, frame.flags.rawValue, frame.callID)
        if frame.attachment != nil { buffer.writeInteger(UInt32(frame.payload.readableBytes)) }
    }

    /// The whole frame in one buffer, payload and attachment copied.
    static func encode(_ frame: Frame, into buffer: inout ByteBuffer) {
        writeHeader(frame, into: &buffer)
        buffer.writeImmutableBuffer(frame.payload)
        if let attachment = frame.attachment { buffer.writeImmutableBuffer(attachment) }
    }

    /// Writes `frame` as byte buffers to the handler before `context`: the header (with the body
    /// when it is small) and, separately, any attachment, which is never copied.
    static func write(_ frame: Frame, to context: ChannelHandlerContext, allocator: ByteBufferAllocator,
                      promise: EventLoopPromise<Void>?) {
        let inline = frame.attachment == nil && frame.payload.readableBytes <= copyLimit
        var header = allocator.buffer(
            capacity: Frame.headerLength + 4 + (frame.payload.readableBytes <= copyLimit ? frame.payload.readableBytes : 0))
        writeHeader(frame, into: &header)
        if let attachment = frame.attachment {
            if frame.payload.readableBytes <= copyLimit {
                var body = frame.payload
                header.writeBuffer(&body)
            } else {
                context.write(NIOAny(header), promise: nil)
                header = frame.payload
            }
            context.write(NIOAny(header), promise: nil)
            context.write(NIOAny(attachment), promise: promise)
        } else if inline {
            var body = frame.payload
            header.writeBuffer(&body)
            context.write(NIOAny(header), promise: promise)
        } else {
            context.write(NIOAny(header), promise: nil)
            context.write(NIOAny(frame.payload), promise: promise)
        }
    }
}

/// A message on the wire: the protobuf body and, for media, an attachment carried beside it.
public struct RPCPayload: Sendable, Hashable {
    public var body: ByteBuffer
    public var attachment: ByteBuffer?

    public init(body: ByteBuffer, attachment: ByteBuffer? = nil) {
        self.body = body
        self.attachment = attachment
    }

    /// Splits a MESSAGE frame's payload.
    public init(frame: Frame) throws {
        guard frame.flags.contains(.attachment) else {
            self.init(body: frame.payload)
            return
        }
        var p = frame.payload
        guard let n = p.readInteger(as: UInt32.self), let body = p.readSlice(length: Int(n)) else {
            throw RPCStatus(.invalidArgument, "MESSAGE frame with an attachment is shorter than its declared body length")
        }
        self.init(body: body, attachment: p)
    }

    func frame(callID: UInt32, end: Bool = false) -> Frame {
        var flags: FrameFlags = end ? .endStream : []
        if attachment != nil { flags.insert(.attachment) }
        return Frame(.message, flags: flags, callID: callID, payload: body, attachment: attachment)
    }

    var wireLength: Int { body.readableBytes + (attachment.map { $0.readableBytes + 4 } ?? 0) }
}
