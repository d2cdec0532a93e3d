import NIOCore

/// The RTMP handshake, client side: C0+C1 out when the connection opens, S0+S1+S2 in, C2
/// (S1 echoed) out; then it leaves the pipeline and passes on whatever followed S2. `done`
/// completes then: the client must not send messages before it.
public final class RTMPClientHandshakeHandler: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let done: EventLoopPromise<Void>
    private var buffered: ByteBuffer?
    private var finished = false

    public init(done: EventLoopPromise<Void>) { self.done = done }

    public func handlerAdded(context: ChannelHandlerContext) {
        if context.channel.isActive { sendC0C1(context: context) }
    }

    public func channelActive(context: ChannelHandlerContext) {
        sendC0C1(context: context)
        context.fireChannelActive()
    }

    private var sent = false
    private func sendC0C1(context: ChannelHandlerContext) {
        guard !sent else { return }
        sent = true
        var out = context.channel.allocator.buffer(capacity: 1 + RTMPHandshakeHandler.signatureSize)
        out.writeInteger(UInt8(3))
        out.writeInteger(UInt32(0))  // time
        out.writeInteger(UInt32(0))  // zero: the plain handshake, no digest
        var rng = SystemRandomNumberGenerator()
        for _ in 0..<(RTMPHandshakeHandler.signatureSize - 8) / 8 { out.writeInteger(rng.next() as UInt64) }
        context.writeAndFlush(wrapOutboundOut(out), promise: nil)
    }

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var incoming = unwrapInboundIn(data)
        if var b = buffered {
            b.writeBuffer(&incoming)
            buffered = b
        } else {
            buffered = incoming
        }
        guard var b = buffered else { return }
        let size = RTMPHandshakeHandler.signatureSize
        guard let version = b.getInteger(at: b.readerIndex, as: UInt8.self) else { return }
        guard version == 3 else {
            fail(context, RTMPError.protocolViolation("RTMP handshake: the server answered version \(version), not 3 (is it an RTMP server?)"))
            return
        }
        guard b.readableBytes >= 1 + 2 * size else { return }
        b.moveReaderIndex(forwardBy: 1)
        let s1 = b.readSlice(length: size)!
        b.moveReaderIndex(forwardBy: size)  // S2: our C1 echoed; servers differ in what they put there
        context.writeAndFlush(wrapOutboundOut(s1), promise: nil)
        finished = true
        buffered = nil
        done.succeed()
        if b.readableBytes > 0 { context.fireChannelRead(wrapInboundOut(b)) }
        context.pipeline.syncOperations.removeHandler(context: context, promise: nil)
    }

    public func channelInactive(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            done.fail(RTMPError.protocolViolation("the server closed the connection during the RTMP handshake"))
        }
        context.fireChannelInactive()
    }

    public func handlerRemoved(context: ChannelHandlerContext) {
        if !finished {
            finished = true
            done.fail(RTMPError.protocolViolation("the connection closed during the RTMP handshake"))
        }
    }

    public func errorCaught(context: ChannelHandlerContext, error: Error) {
        fail(context, error)
    }

    private func fail(_ context: ChannelHandlerContext, _ error: Error) {
        if !finished {
            finished = true
            buffered = nil
            done.fail(error)
        }
        context.fireErrorCaught(error)
        context.close(promise: nil)
    }

    public func removeHandler(context: ChannelHandlerContext, removalToken: ChannelHandlerContext.RemovalToken) {
        context.leavePipeline(removalToken: removalToken)
    }
}
