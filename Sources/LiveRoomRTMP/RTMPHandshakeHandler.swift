import NIOCore

/// The RTMP handshake, server side: C0+C1 in, S0+S1+S2 out, C2 in; then it leaves the
/// pipeline and passes on whatever followed C2 (clients send `connect` right behind it).
///
/// This is the plain handshake (version 3, no digest). ffmpeg and librtmp-based encoders (OBS)
/// accept it when publishing: they only verify a digest when the server's S1 announces one.
public final class RTMPHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    static let signatureSize = 1536

    private enum State { case waitingC0C1, waitingC2, done }
    private var state = State.waitingC0C1
    private var buffered: ByteBuffer?

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var b = buffered {
            b.writeBuffer(&incoming)
            buffered = b
        } else {
            buffered = incoming
        }
        process(context: context)
    }

    private func process(context: ChannelHandlerContext) {
        guard var b = buffered else { return }
        if state == .waitingC0C1 {
            guard let version = b.getInteger(at: b.readerIndex, as: UInt8.self) else { return }
            guard version == 3 else {
                // Not RTMP, or encrypted RTMPE (6): nothing this server speaks.
                context.fireErrorCaught(RTMPError.protocolViolation("RTMP handshake: version \(version) is not supported (expected 3)"))
                context.close(promise: nil)
                buffered = nil
                return
            }
            guard b.readableBytes >= 1 + Self.signatureSize else { buffered = b; return }
            b.moveReaderIndex(forwardBy: 1)
            let c1 = b.readSlice(length: Self.signatureSize)!
            var out = context.channel.allocator.buffer(capacity: 1 + 2 * Self.signatureSize)
            out.writeInteger(UInt8(3))
            // S1: time, zero, random.
            out.writeInteger(UInt32(0))
            out.writeInteger(UInt32(0))
            var rng = SystemRandomNumberGenerator()
            for _ in 0..<(Self.signatureSize - 8) / 8 { out.writeInteger(rng.next() as UInt64) }
            // S2: C1 echoed.
            out.writeImmutableBuffer(c1)
            context.writeAndFlush(wrapOutboundOut(out), promise: nil)
            state = .waitingC2
        }
        if state == .waitingC2 {
            guard b.readableBytes >= Self.signatureSize else { buffered = b; return }
            b.moveReaderIndex(forwardBy: Self.signatureSize)
            state = .done
            buffered = nil
            if b.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(b)) }
            context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
            return
        }
        buffered = b
    }

    public func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        context.leavePipeline(removalToken: removalToken)
    }
}

/// Why an RTMP connection was closed.
public enum RTMPError: Error, Equatable, CustomStringConvertible {
    case protocolViolation(String)
    case tooLarge(String)

    public var description: String {
        switch self {
        case .protocolViolation(let s), .tooLarge(let s): return s
        }
    }
}
