//! Pagination and name filters of the list endpoints, as RabbitMQ 3.10 does them
//! (`rabbit_mgmt_util:pagination_params/1`, `filter_and_paginate/2`): a request with
//! `?page=N` (and optional `page_size`, `name`, `use_regex`) is answered with a page
//! object; one without it gets the whole list, unfiltered, as before.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;

use super::ApiError;

/// Items on a page when the request names none (RabbitMQ's `?DEFAULT_PAGE_SIZE`).
const DEFAULT_PAGE_SIZE: u64 = 100;
/// The largest page a request may ask for (RabbitMQ's `?MAX_PAGE_SIZE`).
const MAX_PAGE_SIZE: u64 = 500;
/// Bound of a compiled `name` filter: a client's pattern may not make the broker build
/// an automaton larger than this.
const MAX_FILTER_REGEX: usize = 1 << 20;

/// What a request asked for: a page, and the filter on names.
pub struct Paging {
    page: u64,
    page_size: u64,
    filter: Filter,
}

enum Filter {
    All,
    /// Case-insensitive substring (RabbitMQ lower-cases both sides).
    Contains(String),
    /// `use_regex=true`: a case-insensitive regular expression, matched anywhere.
    Regex(regex::Regex),
}

/// RabbitMQ's page object; fields in the order it writes them.
#[derive(Serialize)]
struct Page<T> {
    filtered_count: usize,
    item_count: usize,
    items: Vec<T>,
    page: u64,
    page_count: u64,
    page_size: u64,
    total_count: usize,
}

fn invalid() -> ApiError {
    ApiError::bad_request("Pagination parameters are invalid")
}

impl Paging {
    /// The paging `query` asks for: `None` without `page`; RabbitMQ's 400s for a page or
    /// page size that is not a number (`Pagination parameters are invalid`), out of
    /// bounds (`invalid_pagination_parameters`), or a filter that is not a regular
    /// expression.
    pub fn from_query(query: &[(String, String)]) -> Result<Option<Paging>, ApiError> {
        let get = |k: &str| query.iter().find(|(key, _)| key == k).map(|(_, v)| v);
        let int = |k: &str| {
            get(k)
                .map(|v| v.trim().parse::<i64>().map_err(|_| invalid()))
                .transpose()
        };
        let (page, size) = (int("page")?, int("page_size")?);
        let Some(page) = page else {
            return Ok(None);
        };
        let size = size.unwrap_or(DEFAULT_PAGE_SIZE as i64);
        let (Ok(page), Ok(page_size)) = (u64::try_from(page), u64::try_from(size)) else {
            return Err(bounds(page, int("page_size")?));
        };
        if page == 0 || page_size == 0 || page_size > MAX_PAGE_SIZE {
            return Err(bounds(page as i64, int("page_size")?));
        }
        let filter = match get("name").filter(|n| !n.is_empty()) {
            None => Filter::All,
            Some(name) if get("use_regex").is_some_and(|v| v == "true") => Filter::Regex(
                regex::RegexBuilder::new(name)
                    .case_insensitive(true)
                    .size_limit(MAX_FILTER_REGEX)
                    .build()
                    .map_err(|_| invalid())?,
            ),
            Some(name) => Filter::Contains(name.to_lowercase()),
        };
        Ok(Some(Paging {
            page,
            page_size,
            filter,
        }))
    }

    fn keeps(&self, name: &str) -> bool {
        match &self.filter {
            Filter::All => true,
            Filter::Contains(part) => name.to_lowercase().contains(part.as_str()),
            Filter::Regex(re) => re.is_match(name),
        }
    }

    /// This page of `items` (already in the listing's order), filtered by name; 400
    /// `page_out_of_range` past the last page but one (RabbitMQ answers the page just
    /// after the last one empty).
    pub fn answer<T: Serialize>(
        self,
        items: Vec<T>,
        name: impl Fn(&T) -> &str,
    ) -> Result<Response, ApiError> {
        let total_count = items.len();
        let filtered: Vec<T> = items.into_iter().filter(|i| self.keeps(name(i))).collect();
        let filtered_count = filtered.len();
        let offset = (self.page - 1).saturating_mul(self.page_size);
        if offset > filtered_count as u64 {
            return Err(ApiError::with_error(
                StatusCode::BAD_REQUEST,
                "page_out_of_range",
                format!(
                    "Page out of range, page: {} page size: {}, len: {filtered_count}",
                    self.page, self.page_size
                ),
            ));
        }
        let items: Vec<T> = filtered
            .into_iter()
            .skip(offset as usize)
            .take(self.page_size as usize)
            .collect();
        Ok(Json(Page {
            filtered_count,
            item_count: items.len(),
            items,
            page: self.page,
            page_count: (filtered_count as u64).div_ceil(self.page_size),
            page_size: self.page_size,
            total_count,
        })
        .into_response())
    }
}

/// RabbitMQ's `invalid_pagination_parameters`, naming what was asked (`undefined` for
/// a page size not given).
fn bounds(page: i64, size: Option<i64>) -> ApiError {
    let size = size.map_or_else(|| "undefined".to_string(), |s| s.to_string());
    ApiError::with_error(
        StatusCode::BAD_REQUEST,
        "invalid_pagination_parameters",
        format!("Invalid pagination parameters: page number {page}, page size {size}"),
    )
}

/// A list endpoint's answer: the whole list, or the page `query` asks for.
pub fn list<T: Serialize>(
    query: &[(String, String)],
    items: Vec<T>,
    name: impl Fn(&T) -> &str,
) -> Result<Response, ApiError> {
    match Paging::from_query(query)? {
        None => Ok(Json(items).into_response()),
        Some(p) => p.answer(items, name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_page_means_no_paging_and_no_filter() {
        assert!(Paging::from_query(&q(&[("name", "x"), ("page_size", "3")]))
            .unwrap()
            .is_none());
    }

    #[test]
    fn bad_pages_are_refused_with_rabbitmqs_reasons() {
        let err = |pairs| Paging::from_query(&q(pairs)).err().unwrap();
        let e = err(&[("page", "0")]);
        assert_eq!(e.error, Some("invalid_pagination_parameters"));
        assert_eq!(
            e.reason,
            "Invalid pagination parameters: page number 0, page size undefined"
        );
        let e = err(&[("page", "1"), ("page_size", "501")]);
        assert_eq!(
            e.reason,
            "Invalid pagination parameters: page number 1, page size 501"
        );
        assert_eq!(
            err(&[("page", "x")]).reason,
            "Pagination parameters are invalid"
        );
        assert_eq!(
            err(&[("page", "1"), ("name", "("), ("use_regex", "true")]).reason,
            "Pagination parameters are invalid"
        );
    }

    #[test]
    fn filters_are_case_insensitive() {
        let p = Paging::from_query(&q(&[("page", "1"), ("name", "AbC")]))
            .unwrap()
            .unwrap();
        assert!(p.keeps("xabcx") && !p.keeps("ab"));
        let p = Paging::from_query(&q(&[
            ("page", "1"),
            ("name", "^a.c$"),
            ("use_regex", "true"),
        ]))
        .unwrap()
        .unwrap();
        assert!(p.keeps("ABC") && !p.keeps("xabc"));
    }
}
