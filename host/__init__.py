"""What rpmimg asks of the host operating system, in one place at the bottom.

Raw kernel calls (`host.kernel`) and, beside them, the other ways rpmimg touches the
machine. Policy (what to do when a call fails) lives in the packages above; this
package imports nothing of rpmimg's own.
"""
