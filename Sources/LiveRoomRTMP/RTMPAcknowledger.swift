import NIOCore

/// Counts the bytes the peer sends and acknowledges them every window (RTMP 1.0, 5.4.3), as
/// encoders expect from a server. It sits next to the socket, so it sees every byte; the peer's
/// window reaches it as a user outbound event from the session.
public final class RTMPAcknowledger: ChannelDuplexHandler {
    public typealias InboundIn = ByteBuffer
    public typealias InboundOut = ByteBuffer
    public typealias OutboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    /// The peer asked to be acknowledged every `size` bytes (its Window Acknowledgement Size).
    public struct PeerWindow: Sendable { public var size: UInt32; public init(size: UInt32) { self.size = size } }

    private var received: UInt64 = 0
    private var acknowledged: UInt64 = 0
    private var window: UInt64 = 0

    public init() {}

    public func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        received += UInt64(unwrapInboundIn(data).readableBytes)
        context.fireChannelRead(data)
        if window > 0, received - acknowledged >= window {
            acknowledged = received
            var b = context.channel.allocator.buffer(capacity: 16)
            // One type-0 chunk on chunk stream 2: timestamp 0, length 4, type 3, stream 0.
            b.writeBytes([0x02, 0, 0, 0, 0, 0, 4, 3, 0, 0, 0, 0])
            b.writeInteger(UInt32(truncatingIfNeeded: received))
            context.writeAndFlush(wrapOutboundOut(b), promise: nil)
        }
    }

    public func triggerUserOutboundEvent(context: ChannelHandlerContext, event: Any, promise: EventLoopPromise<Void>?) {
        if let w = event as? PeerWindow {
            window = UInt64(w.size)
            promise?.succeed()
        } else {
            context.triggerUserOutboundEvent(event, promise: promise)
        }
    }
}
