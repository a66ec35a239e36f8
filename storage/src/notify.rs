//! A general async signal for one thread: tasks wait, one call wakes them
//! all. Storage uses it to end a sync round's waiters; the broker to wake
//! long-polling fetches and waiters on commits.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// Wakes every waiting task (on one shard) when [`Notify::notify_all`] is
/// called: here when a sync round ends; the broker also uses it to wake
/// long-polling fetches after an append.
#[derive(Debug, Default)]
pub struct Notify {
    generation: Cell<u64>,
    wakers: RefCell<Vec<Waker>>,
}

impl Notify {
    pub fn notify_all(&self) {
        self.generation.set(self.generation.get() + 1);
        for w in self.wakers.borrow_mut().drain(..) {
            w.wake();
        }
    }

    /// Resolves at the next `notify_all` after this call.
    pub fn wait(&self) -> NotifyWait<'_> {
        NotifyWait {
            notify: self,
            seen: self.generation.get(),
        }
    }
}

/// The future of [`Notify::wait`].
pub struct NotifyWait<'a> {
    notify: &'a Notify,
    seen: u64,
}

impl Future for NotifyWait<'_> {
    type Output = ();
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.generation.get() != self.seen {
            return Poll::Ready(());
        }
        // A task polled again before a notify registers once, so the list
        // stays bounded by the number of waiting tasks.
        let mut wakers = self.notify.wakers.borrow_mut();
        if !wakers.iter().any(|w| w.will_wake(cx.waker())) {
            wakers.push(cx.waker().clone());
        }
        Poll::Pending
    }
}
