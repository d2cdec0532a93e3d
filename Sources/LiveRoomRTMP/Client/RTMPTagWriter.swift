import NIOCore

/// Writes FLV tags to a published stream from the connection's own event loop, without a task
/// or a hop per tag: it sits first in the pipeline (next to the socket), encodes tags into
/// chunks itself and writes them there. A relay feeds it from a queue filled on the same loop.
/// It reports writability so the feeder can stop while the server is slow.
public final class RTMPTagWriter: ChannelInboundHandler, RemovableChannelHandler {
    public typealias InboundIn = ByteBuffer
    public typealias OutboundOut = ByteBuffer

    private let streamId: UInt32
    private let encoder: RTMPChunkEncoder
    private var context: ChannelHandlerContext?
    /// Called on the loop when the connection can take writes again, or closed (false).
    private let onChange: (_ open: Bool) -> Void

    public init(streamId: UInt32, chunkSize: Int, onChange: @escaping (_ open: Bool) -> Void) {
        self.streamId = streamId
        self.encoder = RTMPChunkEncoder(chunkSize: chunkSize)
        self.onChange = onChange
    }

    public func handlerAdded(context: ChannelHandlerContext) { self.context = context }

    public func handlerRemoved(context: ChannelHandlerContext) { self.context = nil }

    /// Whether the connection is still open.
    public var isOpen: Bool { context?.channel.isActive ?? false }

    /// Whether writes would go out now (false once closed, or while the socket buffer is full).
    public var isWritable: Bool { context.map { $0.channel.isActive && $0.channel.isWritable } ?? false }

    /// Encodes and writes one tag (not flushed).
    public func write(_ tag: FLVTag) throws {
        guard let context else { return }
        var out = context.channel.allocator.buffer(capacity: tag.data.readableBytes + 16 + tag.data.readableBytes / 4096 * 5)
        try encoder.encode(data: RTMPClientMessages.media(tag, streamId: streamId), out: &out)
        context.write(wrapOutboundOut(out), promise: nil)
    }

    public func flush() { context?.flush() }

    public func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { onChange(true) }
        context.fireChannelWritabilityChanged()
    }

    public func channelInactive(context: ChannelHandlerContext) {
        onChange(false)
        context.fireChannelInactive()
    }
}
